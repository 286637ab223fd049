// One round trip through a client generated from openapi/openapi.json (openapi-typescript types,
// openapi-fetch at run time): log in, create a service, find it in the list, read a problem.
// tsc checks this file against the generated types first, so a spec the generator cannot use,
// or one that no longer matches these calls, fails before anything runs.
import createClient from "openapi-fetch";
import type { paths } from "./schema.js";

// The two things used from node, declared here rather than pulling in @types/node.
declare const process: { env: Record<string, string | undefined>; pid: number };

const base = process.env.KEYGATE_URL;
const password = process.env.KEYGATE_ADMIN_PASSWORD;
if (!base || !password) throw new Error("KEYGATE_URL and KEYGATE_ADMIN_PASSWORD are required");

function check(ok: unknown, what: string): asserts ok {
  if (!ok) throw new Error(`round trip: ${what}`);
}

const api = createClient<paths>({ baseUrl: base });

const login = await api.POST("/admin/auth/login", {
  body: { username: "admin", password },
});
check(login.data, `login failed: ${JSON.stringify(login.error)}`);
const token: string = login.data.access_token;
const authed = { headers: { Authorization: `Bearer ${token}` } };

const slug = `gen-client-${process.pid}`;
const created = await api.POST("/admin/services", {
  ...authed,
  body: { slug, kind: "openai", base_url: "https://api.openai.com/v1", strategy: "round_robin" },
});
check(created.response.status === 201 && created.data, `create: ${created.response.status} ${JSON.stringify(created.error)}`);
check(created.data.slug === slug && created.data.kind === "openai", "create returned another service");

const listed = await api.GET("/admin/services", { ...authed, params: { query: { limit: 1000 } } });
check(listed.data, `list: ${JSON.stringify(listed.error)}`);
check(listed.data.items.some((s) => s.slug === slug), "the new service is not in the list");

// An error is typed too: the problem document of a duplicate.
const again = await api.POST("/admin/services", {
  ...authed,
  body: { slug, kind: "openai", base_url: "https://api.openai.com/v1" },
});
check(again.response.status === 409, `duplicate: expected 409, got ${again.response.status}`);
check(again.response.headers.get("content-type")?.startsWith("application/problem+json"), "duplicate: not problem+json");
check(again.error?.status === 409, "duplicate: the problem's status is not 409");

console.log(`round trip ok: created and listed '${slug}' through the generated client`);

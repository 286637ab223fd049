{{/* Chart name, truncated to the 63 characters Kubernetes allows in names and labels. */}}
{{- define "keygate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-keygate, or the release name if it already says keygate. */}}
{{- define "keygate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "keygate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keygate.labels" -}}
helm.sh/chart: {{ include "keygate.chart" . }}
{{ include "keygate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "keygate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keygate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keygate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret the pods read their environment from. */}}
{{- define "keygate.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "keygate.fullname" . }}
{{- end }}
{{- end }}

{{/* More than one pod can run at once (replicas or autoscaling). */}}
{{- define "keygate.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* Refuses value combinations that cannot work. Included from deployment.yaml. */}}
{{- define "keygate.validate" -}}
{{- if and .Values.persistence.enabled (include "keygate.multiReplica" .) }}
{{- fail "persistence.enabled (embedded SQLite mode) runs exactly one replica: set replicaCount=1 and autoscaling.enabled=false, or use Postgres + Redis" }}
{{- end }}
{{- if and (not .Values.persistence.enabled) (not .Values.existingSecret) }}
{{- $_ := required "secrets.databaseUrl is required (postgres://...), or set existingSecret, or persistence.enabled=true for the single-replica embedded mode" .Values.secrets.databaseUrl }}
{{- $_ := required "secrets.jwtSecret is required in enterprise mode (openssl rand -base64 48)" .Values.secrets.jwtSecret }}
{{- $_ := required "secrets.encryptionKey is required in enterprise mode (openssl rand -base64 32)" .Values.secrets.encryptionKey }}
{{- if include "keygate.multiReplica" . }}
{{- $_ := required "secrets.redisUrl is required when more than one replica runs (redis://...)" .Values.secrets.redisUrl }}
{{- end }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "keygate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keygate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The migration Job runs only against Postgres: embedded mode migrates SQLite on start. */}}
{{- define "keygate.migrationJob" -}}
{{- if and .Values.migrationJob.enabled (not .Values.persistence.enabled) }}true{{ end }}
{{- end }}

{{/*
Labels of the migration Job's pod. Deliberately not the selector labels: the Service and the
NetworkPolicy must not pick up the Job's pod.
*/}}
{{- define "keygate.migrationLabels" -}}
app.kubernetes.io/name: {{ include "keygate.name" . }}-migrate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: migrate
{{- end }}

{{/* Environment shared by the server and the migration Job. */}}
{{- define "keygate.commonEnv" -}}
- name: KEYGATE__LOG__FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.config.logLevel | quote }}
{{- end }}

{{/* OpenTelemetry trace export (standard OTEL_* variables), only with an endpoint. */}}
{{- define "keygate.otelEnv" -}}
{{- with .Values.otel }}
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .serviceName | default "keygate" | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .samplerArg | toString | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "service.instance.id=$(POD_NAME),k8s.pod.name=$(POD_NAME),k8s.namespace.name={{ $.Release.Namespace }}"
{{- end }}
{{- end }}
{{- end }}

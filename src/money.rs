//! Money as integer micro-units: 1 currency unit = 1_000_000 micros, in `i64`, everywhere below the
//! API edge (database columns, coordination store, Lua). The admin API keeps decimal numbers in
//! currency units (`"balance": 0.24`); the conversions here are exact for every amount the API
//! accepts, because they go through the shortest decimal text of a double, never `x * 1e6`.
//!
//! Plain `i64` rather than a newtype: the values cross sea-orm columns, Redis arguments and Lua
//! numbers, where a newtype would only add conversions; the `_micros` suffix on names carries the
//! unit instead.

/// Micro-units of the currency (1 unit = 1_000_000).
pub type Micros = i64;

pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// The largest amount the API accepts, in currency units. Below 2^33 units the gap between
/// adjacent doubles is under one micro, so every accepted amount survives a trip through a JSON
/// double exactly (and 10^15 micros is far inside the 2^53 a Lua number holds exactly).
pub const MAX_UNITS: i64 = 1_000_000_000;
pub const MAX_MICROS: i64 = MAX_UNITS * MICROS_PER_UNIT;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("'{0}' is not a decimal number")]
    NotANumber(String),
    #[error("must be a finite number")]
    NotFinite,
    #[error("must not be negative")]
    Negative,
    #[error("must be at most {MAX_UNITS} currency units")]
    TooLarge,
}

/// Parses a decimal amount in currency units (`"0.24"`, `"12"`, `"-1.5"`, `"1e-3"`) into micros,
/// rounding half away from zero past the sixth decimal. Rejects amounts beyond `MAX_UNITS`.
pub fn parse_units(s: &str) -> Result<Micros, MoneyError> {
    let t = s.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let plain = !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !plain {
        // Exponent forms and the like: let the float parser read them, then take their shortest
        // decimal text, which is plain.
        return match t.parse::<f64>() {
            Ok(f) if f.is_finite() => from_units_f64(f),
            Ok(_) => Err(MoneyError::NotFinite),
            Err(_) => Err(MoneyError::NotANumber(t.chars().take(32).collect())),
        };
    }
    let int = int.trim_start_matches('0');
    if int.len() > MAX_UNITS.to_string().len() {
        return Err(MoneyError::TooLarge);
    }
    let whole: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| MoneyError::TooLarge)?
    };
    let mut micros: i64 = 0;
    for (i, d) in frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(6)
        .enumerate()
    {
        micros += (d - b'0') as i64 * 10i64.pow(5 - i as u32);
    }
    // Half away from zero on the seventh decimal, as SQL ROUND does in the migration.
    if frac.as_bytes().get(6).is_some_and(|d| *d >= b'5') {
        micros += 1;
    }
    let total = whole
        .checked_mul(MICROS_PER_UNIT)
        .and_then(|w| w.checked_add(micros))
        .filter(|m| *m <= MAX_MICROS)
        .ok_or(MoneyError::TooLarge)?;
    Ok(if neg { -total } else { total })
}

/// Converts an amount in currency units, as a JSON number arrives, into micros: exact for any
/// amount with at most six decimals (0.1 becomes 100000, not 100000.00000000001 truncated).
pub fn from_units_f64(units: f64) -> Result<Micros, MoneyError> {
    if !units.is_finite() {
        return Err(MoneyError::NotFinite);
    }
    if units.abs() > MAX_UNITS as f64 {
        return Err(MoneyError::TooLarge);
    }
    // `Display` for f64 prints the shortest text that reads back as the same double, without an
    // exponent: exactly what the client wrote, for any amount a person would write.
    parse_units(&units.to_string())
}

/// Micros as a double in currency units, for JSON. Exact (the nearest double to the decimal,
/// which prints back as that decimal) for every amount up to `MAX_UNITS`.
pub fn to_units_f64(micros: Micros) -> f64 {
    micros as f64 / MICROS_PER_UNIT as f64
}

/// Exact decimal text in currency units without trailing zeros: `240000` -> `"0.24"`.
pub fn format_units(micros: Micros) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let whole = abs / MICROS_PER_UNIT as u64;
    let frac = abs % MICROS_PER_UNIT as u64;
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let f = format!("{frac:06}");
        format!("{sign}{whole}.{}", f.trim_end_matches('0'))
    }
}

/// A non-negative amount from the API (a balance, a budget).
pub fn amount_from_units_f64(units: f64) -> Result<Micros, MoneyError> {
    let m = from_units_f64(units)?;
    if m < 0 || units.is_sign_negative() && units != 0.0 {
        return Err(MoneyError::Negative);
    }
    Ok(m)
}

/// Either a JSON number or a decimal string, as an amount may arrive.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Wire {
    Number(f64),
    Text(String),
}

fn amount_from_wire(w: Wire) -> Result<Micros, MoneyError> {
    match w {
        Wire::Number(f) => amount_from_units_f64(f),
        Wire::Text(s) => {
            let m = parse_units(&s)?;
            if m < 0 || s.trim().starts_with('-') && m != 0 {
                return Err(MoneyError::Negative);
            }
            Ok(m)
        }
    }
}

/// Serde for a non-negative amount: micros in Rust, a number in currency units on the wire (a
/// decimal string is accepted too). Use with `#[schema(value_type = f64)]`.
pub mod units {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Micros, Wire, amount_from_wire, to_units_f64};

    pub fn serialize<S: Serializer>(m: &Micros, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(to_units_f64(*m))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Micros, D::Error> {
        let w = Wire::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected an amount in currency units"))?;
        amount_from_wire(w).map_err(|e| serde::de::Error::custom(format!("amount {e}")))
    }
}

/// `units` for an optional amount (`null` and absence are `None`); pair with `#[serde(default)]`.
pub mod units_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Micros, Wire, amount_from_wire, to_units_f64};

    pub fn serialize<S: Serializer>(m: &Option<Micros>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => s.serialize_f64(to_units_f64(*m)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Micros>, D::Error> {
        let w = Option::<Wire>::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected an amount in currency units"))?;
        w.map(amount_from_wire)
            .transpose()
            .map_err(|e| serde::de::Error::custom(format!("amount {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_amounts_become_exact_micros() {
        assert_eq!(parse_units("0.24"), Ok(240_000));
        assert_eq!(parse_units("12"), Ok(12_000_000));
        assert_eq!(parse_units(".5"), Ok(500_000));
        assert_eq!(parse_units("-1.5"), Ok(-1_500_000));
        assert_eq!(parse_units("0.000001"), Ok(1));
        assert_eq!(parse_units("1e-3"), Ok(1_000));
        assert_eq!(from_units_f64(0.24), Ok(240_000));
        assert_eq!(from_units_f64(10.5), Ok(10_500_000));
    }

    #[test]
    fn point_one_plus_point_two_is_exactly_point_three_in_micros() {
        let sum = from_units_f64(0.1).unwrap() + from_units_f64(0.2).unwrap();
        assert_eq!(sum, from_units_f64(0.3).unwrap());
        assert_eq!(sum, 300_000);
        assert_eq!(format_units(sum), "0.3");
        // The float way gets it wrong, which is why storage is integer.
        assert_ne!(0.1 + 0.2, 0.3);
    }

    #[test]
    fn amounts_round_trip_through_a_json_double_exactly() {
        for m in [
            0,
            1,
            99,
            240_000,
            300_000,
            1_234_567,
            10_500_000,
            MAX_MICROS - 1,
            MAX_MICROS,
        ] {
            let json = serde_json::to_string(&to_units_f64(m)).unwrap();
            let back: f64 = serde_json::from_str(&json).unwrap();
            assert_eq!(from_units_f64(back), Ok(m), "{m} via {json}");
        }
        // The worst case is the top of the range, where doubles are sparsest.
        for m in (MAX_MICROS - 5_000..=MAX_MICROS).chain((0..5_000).map(|i| i * 7_919)) {
            assert_eq!(from_units_f64(to_units_f64(m)), Ok(m), "{m}");
        }
        assert_eq!(
            serde_json::to_string(&to_units_f64(240_000)).unwrap(),
            "0.24"
        );
    }

    #[test]
    fn the_seventh_decimal_rounds_half_away_from_zero() {
        assert_eq!(parse_units("0.0000005"), Ok(1));
        assert_eq!(parse_units("0.0000004"), Ok(0));
        assert_eq!(parse_units("-0.0000005"), Ok(-1));
        assert_eq!(parse_units("1.9999999"), Ok(2_000_000));
    }

    #[test]
    fn nan_infinity_text_and_huge_amounts_are_refused() {
        assert_eq!(from_units_f64(f64::NAN), Err(MoneyError::NotFinite));
        assert_eq!(from_units_f64(f64::INFINITY), Err(MoneyError::NotFinite));
        assert_eq!(from_units_f64(1e10), Err(MoneyError::TooLarge));
        assert_eq!(parse_units("1000000000.000001"), Err(MoneyError::TooLarge));
        assert_eq!(
            parse_units("99999999999999999999"),
            Err(MoneyError::TooLarge)
        );
        assert!(matches!(
            parse_units("lots"),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(parse_units(""), Err(MoneyError::NotANumber(_))));
        assert_eq!(parse_units("1000000000"), Ok(MAX_MICROS));
    }

    #[test]
    fn formatting_is_exact_and_drops_trailing_zeros() {
        assert_eq!(format_units(240_000), "0.24");
        assert_eq!(format_units(12_000_000), "12");
        assert_eq!(format_units(1), "0.000001");
        assert_eq!(format_units(-1_500_000), "-1.5");
    }

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Body {
        #[serde(with = "units")]
        spent: Micros,
        #[serde(default, with = "units_opt")]
        budget: Option<Micros>,
    }

    #[test]
    fn serde_reads_numbers_or_decimal_strings_and_writes_numbers() {
        let b: Body = serde_json::from_str(r#"{"spent": 0.1, "budget": "0.2"}"#).unwrap();
        assert_eq!(
            b,
            Body {
                spent: 100_000,
                budget: Some(200_000)
            }
        );
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"spent":0.1,"budget":0.2}"#
        );
        let b: Body = serde_json::from_str(r#"{"spent": 0}"#).unwrap();
        assert_eq!(b.budget, None);
        let e = serde_json::from_str::<Body>(r#"{"spent": -1}"#).unwrap_err();
        assert!(e.to_string().contains("must not be negative"), "{e}");
        let e = serde_json::from_str::<Body>(r#"{"spent": 1, "budget": 1e300}"#).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }
}

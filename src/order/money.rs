//! Money, exact to the cent: parsed from the literal text of a JSON number, never through a
//! float, and written back with exactly its cents.

use super::{InvalidOrder, MAX_TOTAL_CENTS};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// An amount of money, exact to the cent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

impl Money {
    /// The amount in cents.
    pub fn cents(self) -> i64 {
        self.0
    }

    /// From cents as stored; `None` when out of the accepted range.
    pub fn from_cents(cents: i64) -> Option<Money> {
        (0..=MAX_TOTAL_CENTS)
            .contains(&cents)
            .then_some(Money(cents))
    }

    /// Parses the literal text of a JSON number exactly, without going through a float:
    /// `123.45`, `5`, `1.5e1` and `12.300` are accepted; a third significant decimal, a negative
    /// value or one above 99,999,999.99 is not.
    pub fn parse_json_number(text: &str) -> Result<Money, InvalidOrder> {
        let wrong_type = || InvalidOrder::WrongShape {
            message: "total must be a number".into(),
            field: Some("total".into()),
        };
        let text = text.trim();
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let out_of_range = || InvalidOrder::rule("total", "total must be at most 99999999.99");
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(i) => {
                let exp = &unsigned[i + 1..];
                let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if exp_digits.is_empty() || !exp_digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(wrong_type());
                }
                (
                    &unsigned[..i],
                    exp.parse::<i64>().map_err(|_| out_of_range())?,
                )
            }
            None => (unsigned, 0),
        };
        let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int_part.is_empty() || !digits_ok(int_part) || !digits_ok(frac_part) {
            return Err(wrong_type());
        }
        // value = digits * 10^scale, with leading and trailing zeros taken off the digits.
        let all = format!("{int_part}{frac_part}");
        let without_trailing = all.trim_end_matches('0');
        let digits = without_trailing.trim_start_matches('0');
        if digits.is_empty() {
            return Ok(Money(0));
        }
        if negative {
            return Err(InvalidOrder::rule("total", "total must not be negative"));
        }
        let scale = exponent
            .saturating_sub(frac_part.len() as i64)
            .saturating_add((all.len() - without_trailing.len()) as i64);
        if scale < -2 {
            return Err(InvalidOrder::rule(
                "total",
                "total must have at most 2 decimals",
            ));
        }
        // cents = digits * 10^(scale + 2); beyond 11 digits it is out of range anyway.
        let shift = scale + 2;
        if digits.len() as i64 + shift > 11 {
            return Err(out_of_range());
        }
        let base: i64 = digits.parse().map_err(|_| out_of_range())?;
        Money::from_cents(base * 10_i64.pow(shift as u32)).ok_or_else(out_of_range)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for Money {
    /// Written as a JSON number with exactly the cents it holds (`123.45`, `5.00`).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&RawValue>::deserialize(deserializer)?;
        Money::parse_json_number(raw.get()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(text: &str) -> Result<i64, InvalidOrder> {
        Money::parse_json_number(text).map(Money::cents)
    }

    #[test]
    fn money_is_exact_to_the_cent() {
        assert_eq!(money("123.45"), Ok(12345));
        assert_eq!(money("0"), Ok(0));
        assert_eq!(money("-0"), Ok(0));
        assert_eq!(money("0.1"), Ok(10));
        assert_eq!(money("5"), Ok(500));
        assert_eq!(money("12.300"), Ok(1230));
        assert_eq!(money("1.5e1"), Ok(1500));
        assert_eq!(money("1234E-2"), Ok(1234));
        assert_eq!(money("0.10e1"), Ok(100));
        assert_eq!(money("99999999.99"), Ok(MAX_TOTAL_CENTS));
        assert_eq!(money("0.07"), Ok(7));
        assert_eq!(money("100"), Ok(10000));
        assert_eq!(money("1e3"), Ok(100000));
    }

    #[test]
    fn money_rejects_what_breaks_a_rule() {
        for bad in [
            "0.001",
            "1.234",
            "1234.5E-2",
            "100000000",
            "99999999.991",
            "1e20",
            "-1",
            "-0.01",
        ] {
            assert!(
                matches!(money(bad), Err(InvalidOrder::Rule { field: "total", .. })),
                "{bad} should break a rule, got {:?}",
                money(bad)
            );
        }
        assert!(matches!(
            money("\"12\""),
            Err(InvalidOrder::WrongShape { .. })
        ));
        assert!(matches!(
            money("null"),
            Err(InvalidOrder::WrongShape { .. })
        ));
        assert!(matches!(
            money("1e99999999999999999999"),
            Err(InvalidOrder::Rule { .. })
        ));
        assert!(matches!(money("1e"), Err(InvalidOrder::WrongShape { .. })));
        assert!(matches!(
            money("1.2.3"),
            Err(InvalidOrder::WrongShape { .. })
        ));
    }

    #[test]
    fn money_prints_two_decimals() {
        assert_eq!(Money(12345).to_string(), "123.45");
        assert_eq!(Money(500).to_string(), "5.00");
        assert_eq!(Money(7).to_string(), "0.07");
        assert_eq!(serde_json::to_string(&Money(12345)).unwrap(), "123.45");
    }
}

//! What LLM usage costs, in exact decimal USD.
//!
//! A model's price is in USD per million input (prompt) and output (completion) tokens. The
//! table starts from built-in defaults — list prices at the time of writing, there to be
//! overridden — and a project replaces or adds models in `settings.model_prices`:
//!
//! ```json
//! {"model_prices": {"gpt-4o": {"input_per_million": "2.50", "output_per_million": "10.00"}}}
//! ```
//!
//! Prices may be JSON strings or numbers. A number is read from its JSON text, never through
//! arithmetic on a float, so `2.5` is exactly 2.5; a price that needs more digits than a float
//! carries should be given as a string. Every amount is a [`Decimal`] and every cost is exact:
//! the cost of a run is the exact sum of its steps' costs.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::FieldError;

/// Where a project keeps its price overrides.
pub const MODEL_PRICES_FIELD: &str = "settings.model_prices";

/// The highest accepted price, in USD per million tokens.
pub const MAX_PRICE_PER_MILLION: i64 = 1_000_000;

/// The most decimal places a price may have.
pub const MAX_PRICE_DECIMALS: u32 = 12;

/// Built-in list prices (USD per million input and output tokens), as decimal text. They are
/// defaults only: a project overrides them, or adds other models, in `settings.model_prices`.
const DEFAULT_PRICES: &[(&str, &str, &str)] = &[
    ("gpt-4o", "2.50", "10.00"),
    ("gpt-4o-mini", "0.15", "0.60"),
    ("gpt-4.1", "2.00", "8.00"),
    ("gpt-4.1-mini", "0.40", "1.60"),
    ("gpt-4.1-nano", "0.10", "0.40"),
    ("o3", "2.00", "8.00"),
    ("o4-mini", "1.10", "4.40"),
    ("claude-opus-4", "15.00", "75.00"),
    ("claude-sonnet-4", "3.00", "15.00"),
    ("claude-3-5-haiku", "0.80", "4.00"),
];

/// The two per-million prices of one model, each within `0..=1_000_000` with at most 12
/// decimal places, so a cost never loses a digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ModelPrice {
    input_per_million: Decimal,
    output_per_million: Decimal,
}

impl ModelPrice {
    /// A price, checking each amount is in range.
    pub fn new(input_per_million: Decimal, output_per_million: Decimal) -> Result<Self, String> {
        Ok(Self {
            input_per_million: amount(input_per_million)?,
            output_per_million: amount(output_per_million)?,
        })
    }

    /// USD per million input (prompt) tokens.
    pub fn input_per_million(&self) -> Decimal {
        self.input_per_million
    }

    /// USD per million output (completion) tokens.
    pub fn output_per_million(&self) -> Decimal {
        self.output_per_million
    }

    /// `(tokens_prompt × input + tokens_completion × output) / 1_000_000`, exactly.
    ///
    /// Computed on integers: the prices' digits fit in 60 bits and token counts in 64, so the
    /// sum fits an `i128`; only a result beyond [`Decimal`]'s 96 bits — far past any real
    /// usage — is refused rather than rounded.
    pub fn cost(&self, tokens_prompt: u64, tokens_completion: u64) -> Result<Decimal, CostError> {
        let scale = self
            .input_per_million
            .scale()
            .max(self.output_per_million.scale());
        let digits = |price: Decimal| price.mantissa() * 10_i128.pow(scale - price.scale());
        let mut sum = i128::from(tokens_prompt) * digits(self.input_per_million)
            + i128::from(tokens_completion) * digits(self.output_per_million);
        // Dividing by a million is six more decimal places.
        let mut scale = scale + 6;
        while scale > 0 && sum % 10 == 0 && sum != 0 {
            sum /= 10;
            scale -= 1;
        }
        Decimal::try_from_i128_with_scale(sum, scale)
            .map(|cost| cost.normalize())
            .map_err(|_| CostError::Overflow)
    }
}

/// Why a cost could not be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    /// The model has no price, built in or in the project's settings. The engine decides what
    /// that means for the run; the price table never guesses.
    #[error("no price is known for model `{0}`; set it in settings.model_prices")]
    UnknownModel(String),
    /// The cost is too large for a decimal (billions of billions of tokens).
    #[error("the cost is too large to represent exactly")]
    Overflow,
}

/// Invalid `settings.model_prices`: every offending field, e.g.
/// `settings.model_prices.gpt-4o.input_per_million`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid settings.model_prices: {}", describe(.0))]
pub struct InvalidPrices(pub Vec<FieldError>);

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Model name → price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTable {
    prices: BTreeMap<String, ModelPrice>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::defaults()
    }
}

impl PriceTable {
    /// The built-in prices only.
    pub fn defaults() -> Self {
        let prices = DEFAULT_PRICES
            .iter()
            .filter_map(|(model, input, output)| {
                let price = ModelPrice::new(
                    Decimal::from_str_exact(input).ok()?,
                    Decimal::from_str_exact(output).ok()?,
                )
                .ok()?;
                Some(((*model).to_owned(), price))
            })
            .collect();
        Self { prices }
    }

    /// The built-in prices, with a project's `settings.model_prices` replacing or adding
    /// models. Settings without `model_prices` (or with it `null`) change nothing.
    pub fn with_overrides(settings: &Map<String, Value>) -> Result<Self, InvalidPrices> {
        let mut table = Self::defaults();
        table.prices.extend(parse_model_prices(settings)?);
        Ok(table)
    }

    /// A model's price, matched exactly by name.
    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        self.prices.get(model)
    }

    /// What `tokens_prompt` input and `tokens_completion` output tokens of `model` cost, in USD.
    pub fn cost(
        &self,
        model: &str,
        tokens_prompt: u64,
        tokens_completion: u64,
    ) -> Result<Decimal, CostError> {
        self.price(model)
            .ok_or_else(|| CostError::UnknownModel(model.to_owned()))?
            .cost(tokens_prompt, tokens_completion)
    }

    /// The priced models, in name order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.prices.keys().map(String::as_str)
    }
}

/// Checks a project's `settings.model_prices` (for the projects API to call on save): every
/// offending field, named like `settings.model_prices.<model>.<field>`; empty when valid.
pub fn validate_model_prices(settings: &Map<String, Value>) -> Vec<FieldError> {
    parse_model_prices(settings)
        .err()
        .map_or_else(Vec::new, |e| e.0)
}

/// Parses a project's `settings.model_prices` into prices, collecting every error.
pub fn parse_model_prices(
    settings: &Map<String, Value>,
) -> Result<BTreeMap<String, ModelPrice>, InvalidPrices> {
    let entries = match settings.get("model_prices") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(entries)) => entries,
        Some(_) => {
            return Err(InvalidPrices(vec![FieldError::new(
                MODEL_PRICES_FIELD,
                "must be an object of model name → {input_per_million, output_per_million}",
            )]))
        }
    };
    let mut errors = Vec::new();
    let mut prices = BTreeMap::new();
    for (model, entry) in entries {
        let field = format!("{MODEL_PRICES_FIELD}.{model}");
        if model.trim().is_empty() || model.chars().count() > 200 {
            errors.push(FieldError::new(
                &field,
                "a model name must have 1 to 200 characters",
            ));
            continue;
        }
        let Value::Object(entry) = entry else {
            errors.push(FieldError::new(
                &field,
                "must be an object with input_per_million and output_per_million",
            ));
            continue;
        };
        for key in entry.keys() {
            if key != "input_per_million" && key != "output_per_million" {
                errors.push(FieldError::new(format!("{field}.{key}"), "unknown field"));
            }
        }
        let mut read = |name: &str| {
            let result = match entry.get(name) {
                None => Err("is required".to_owned()),
                Some(value) => price_value(value),
            };
            result
                .map_err(|message| errors.push(FieldError::new(format!("{field}.{name}"), message)))
                .ok()
        };
        let input = read("input_per_million");
        let output = read("output_per_million");
        if let (Some(input), Some(output)) = (input, output) {
            prices.insert(
                model.clone(),
                ModelPrice {
                    input_per_million: input,
                    output_per_million: output,
                },
            );
        }
    }
    if errors.is_empty() {
        Ok(prices)
    } else {
        Err(InvalidPrices(errors))
    }
}

/// A price from JSON: decimal text like `"2.50"`, or a number read from its JSON text.
fn price_value(value: &Value) -> Result<Decimal, String> {
    const EXPECTED: &str = "must be a non-negative decimal amount in USD, e.g. \"2.50\"";
    let parsed = match value {
        Value::String(text) => {
            let plain = text.split_once('.').map_or(
                !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
                |(whole, fraction)| {
                    !whole.is_empty()
                        && !fraction.is_empty()
                        && whole.bytes().all(|b| b.is_ascii_digit())
                        && fraction.bytes().all(|b| b.is_ascii_digit())
                },
            );
            if !plain {
                return Err(EXPECTED.into());
            }
            Decimal::from_str_exact(text)
        }
        Value::Number(number) => {
            // The number's own JSON text (shortest round-trip form, e.g. `2.5` or `1e-7`).
            let text = number.to_string();
            if text.contains(['e', 'E']) {
                Decimal::from_scientific(&text)
            } else {
                Decimal::from_str(&text)
            }
        }
        _ => return Err(EXPECTED.into()),
    };
    parsed.map_err(|_| EXPECTED.to_owned()).and_then(amount)
}

/// Checks an amount is within range and precision.
fn amount(value: Decimal) -> Result<Decimal, String> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err("must not be negative".into());
    }
    if value > Decimal::from(MAX_PRICE_PER_MILLION) {
        return Err(format!("must be at most {MAX_PRICE_PER_MILLION}"));
    }
    let value = value.normalize();
    if value.scale() > MAX_PRICE_DECIMALS {
        return Err(format!(
            "must have at most {MAX_PRICE_DECIMALS} decimal places"
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    fn settings(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("settings must be an object"),
        }
    }

    #[test]
    fn a_cost_is_tokens_times_price_exactly() {
        // GIVEN gpt-4o at 2.50 in / 10.00 out per million
        let table = PriceTable::defaults();

        // WHEN 1234 prompt and 567 completion tokens are priced
        let cost = table.cost("gpt-4o", 1234, 567).unwrap();

        // THEN 1234 × 2.50 / 1e6 + 567 × 10 / 1e6 = 0.003085 + 0.00567 = 0.008755, exactly
        assert_eq!(cost, dec("0.008755"));
        assert_eq!(cost.to_string(), "0.008755");
    }

    #[test]
    fn costs_that_floats_get_wrong_are_exact() {
        let price = ModelPrice::new(dec("0.1"), dec("0.2")).unwrap();
        // 0.1 + 0.2 per token-million: a float would give 0.30000000000000004e-6.
        assert_eq!(price.cost(1, 1).unwrap(), dec("0.0000003"));
        assert_eq!(price.cost(0, 0).unwrap(), Decimal::ZERO);
        let tiny = ModelPrice::new(dec("0.000000000001"), dec("999999.999999999999")).unwrap();
        assert_eq!(
            tiny.cost(3, 7).unwrap(),
            // 3 × 1e-12 / 1e6 + 7 × 999999.999999999999 / 1e6
            dec("6.999999999999999996")
        );
    }

    #[test]
    fn the_sum_of_step_costs_equals_the_cost_of_all_their_tokens() {
        // GIVEN three prompt steps of the same run
        let table = PriceTable::defaults();
        let steps = [(1234_u64, 567_u64), (1, 1), (98_765, 4_321)];

        // WHEN each step is priced and the costs are added up
        let total: Decimal = steps
            .iter()
            .map(|(p, c)| table.cost("gpt-4o-mini", *p, *c).unwrap())
            .sum();

        // THEN the sum is exact: the same as pricing all the tokens at once
        let (prompt, completion) = (1234 + 1 + 98_765, 567 + 1 + 4_321);
        assert_eq!(
            total,
            table.cost("gpt-4o-mini", prompt, completion).unwrap()
        );
        // 100000 × 0.15 / 1e6 + 4889 × 0.60 / 1e6 = 0.015 + 0.0029334
        assert_eq!(total, dec("0.0179334"));
        assert_eq!(total.normalize().to_string(), "0.0179334");
    }

    #[test]
    fn huge_token_counts_do_not_lose_digits() {
        let table = PriceTable::defaults();
        assert_eq!(
            table.cost("gpt-4o", u64::MAX, u64::MAX).unwrap(),
            // (2.5 + 10) × 18446744073709551615 / 1e6
            dec("230584300921369.3951875")
        );
        let dearest = ModelPrice::new(
            Decimal::from(MAX_PRICE_PER_MILLION),
            dec("999999.999999999999"),
        )
        .unwrap();
        assert_eq!(dearest.cost(u64::MAX, u64::MAX), Err(CostError::Overflow));
    }

    #[test]
    fn an_unknown_model_is_an_error_not_a_guess() {
        let table = PriceTable::defaults();
        let err = table.cost("my-private-model", 10, 10).unwrap_err();
        assert_eq!(err, CostError::UnknownModel("my-private-model".into()));
        assert!(err.to_string().contains("settings.model_prices"));
        // Names match exactly: a dated snapshot needs its own price.
        assert!(table.price("gpt-4o-2024-08-06").is_none());
    }

    #[test]
    fn the_defaults_cover_common_models() {
        let table = PriceTable::defaults();
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "o4-mini",
            "claude-sonnet-4",
            "claude-3-5-haiku",
        ] {
            assert!(table.price(model).is_some(), "{model}");
        }
        assert_eq!(table.models().count(), DEFAULT_PRICES.len());
        let sonnet = table.price("claude-sonnet-4").unwrap();
        assert_eq!(sonnet.input_per_million(), dec("3"));
        assert_eq!(sonnet.output_per_million(), dec("15"));
    }

    #[test]
    fn project_settings_override_and_add_prices() {
        // GIVEN settings overriding gpt-4o with strings and adding a model with numbers
        let settings = settings(json!({
            "theme": "dark",
            "model_prices": {
                "gpt-4o": {"input_per_million": "2.00", "output_per_million": "8.00"},
                "llama-3-70b": {"input_per_million": 0.59, "output_per_million": 79},
            }
        }));

        // WHEN the table is built
        let table = PriceTable::with_overrides(&settings).unwrap();

        // THEN the override wins, the new model is priced, the other defaults stay
        assert_eq!(
            table.cost("gpt-4o", 1_000_000, 1_000_000).unwrap(),
            dec("10")
        );
        let llama = table.price("llama-3-70b").unwrap();
        assert_eq!(llama.input_per_million(), dec("0.59"));
        assert_eq!(llama.output_per_million(), dec("79"));
        assert_eq!(table.cost("llama-3-70b", 1, 0).unwrap(), dec("0.00000059"));
        assert!(table.price("gpt-4o-mini").is_some());
    }

    #[test]
    fn json_numbers_are_read_from_their_text_not_through_float_arithmetic() {
        for (number, expected) in [
            (json!(0.1), "0.1"),
            (json!(2.5), "2.5"),
            (json!(0.0000001), "0.0000001"),
            (json!(1.1), "1.1"),
            (json!(3), "3"),
            (json!(0), "0"),
        ] {
            assert_eq!(price_value(&number).unwrap(), dec(expected), "{number}");
        }
        // The float's binary value is 1.100000000000000088817841970012523…
        assert_eq!(price_value(&json!(1.1)).unwrap().to_string(), "1.1");
    }

    #[test]
    fn no_model_prices_means_the_defaults() {
        for value in [json!({}), json!({"model_prices": null})] {
            let table = PriceTable::with_overrides(&settings(value)).unwrap();
            assert_eq!(table, PriceTable::defaults());
        }
        assert!(validate_model_prices(&settings(json!({"model_prices": {}}))).is_empty());
    }

    #[test]
    fn every_invalid_price_is_named_by_its_field() {
        // GIVEN settings with many kinds of bad prices
        let settings = settings(json!({
            "model_prices": {
                "gpt-4o": {"input_per_million": "2,50", "output_per_million": -1},
                "m1": {"input_per_million": "1e3", "output_per_million": "1000001"},
                "m2": {"input_per_million": "0.0000000000001", "output_per_million": true},
                "m3": {"input_per_million": "1.5"},
                "m4": {"input_per_million": "1", "output_per_million": "2", "currency": "EUR"},
                "m5": "2.50",
                "ok": {"input_per_million": " 1", "output_per_million": ".5"},
            }
        }));

        // WHEN they are validated
        let errors = validate_model_prices(&settings);

        // THEN each bad field is named, all at once
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "settings.model_prices.gpt-4o.input_per_million",
                "settings.model_prices.gpt-4o.output_per_million",
                "settings.model_prices.m1.input_per_million",
                "settings.model_prices.m1.output_per_million",
                "settings.model_prices.m2.input_per_million",
                "settings.model_prices.m2.output_per_million",
                "settings.model_prices.m3.output_per_million",
                "settings.model_prices.m4.currency",
                "settings.model_prices.m5",
                "settings.model_prices.ok.input_per_million",
                "settings.model_prices.ok.output_per_million",
            ]
        );
        let message = |field: &str| {
            let e = errors.iter().find(|e| e.field.ends_with(field)).unwrap();
            e.message.clone()
        };
        assert_eq!(message("gpt-4o.output_per_million"), "must not be negative");
        assert_eq!(message("m1.output_per_million"), "must be at most 1000000");
        assert_eq!(
            message("m2.input_per_million"),
            "must have at most 12 decimal places"
        );
        assert_eq!(message("m3.output_per_million"), "is required");

        // AND the table refuses the same settings with the same errors
        let err = PriceTable::with_overrides(&settings).unwrap_err();
        assert_eq!(err.0, errors);
        assert!(err
            .to_string()
            .contains("settings.model_prices.m3.output_per_million: is required"));
    }

    #[test]
    fn model_prices_must_be_an_object() {
        let errors = validate_model_prices(&settings(json!({"model_prices": ["gpt-4o"]})));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "settings.model_prices");
        let errors = validate_model_prices(&settings(json!({"model_prices": {" ": {}}})));
        assert_eq!(errors[0].field, "settings.model_prices. ");
    }

    #[test]
    fn trailing_zeros_do_not_change_a_price() {
        let a = ModelPrice::new(dec("2.50"), dec("10.00")).unwrap();
        let b = ModelPrice::new(dec("2.5"), dec("10")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.input_per_million().to_string(), "2.5");
    }
}

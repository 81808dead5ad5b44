//! Update expressions built clause by clause, with their attribute names and values, so a
//! store operation says *what* changes (`set`, `add`) and not how DynamoDB
//! spells it. Every attribute goes through a `#name` placeholder, so reserved words
//! (`name`, `status`, `ttl`…) need no special care.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::builders::UpdateBuilder;
use aws_sdk_dynamodb::types::AttributeValue;

/// The changes one `UpdateItem` (alone or in a transaction) makes, and its condition.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    set: Vec<String>,
    add: Vec<String>,
    remove: Vec<String>,
    condition: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Changes {
    /// No changes yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn placeholder(&mut self, attribute: &str) -> String {
        let name = format!("#{attribute}");
        self.names.insert(name.clone(), attribute.to_owned());
        name
    }

    /// Sets `attribute` to `value`.
    pub fn set(mut self, attribute: &str, value: AttributeValue) -> Self {
        let name = self.placeholder(attribute);
        self.set.push(format!("{name} = :{attribute}"));
        self.values.insert(format!(":{attribute}"), value);
        self
    }

    /// Sets `attribute` with a clause of its own, e.g. `if_not_exists(...)`; the clause names
    /// its values, given with [`value`](Self::value).
    pub fn set_with(mut self, attribute: &str, expression: &str) -> Self {
        let name = self.placeholder(attribute);
        self.set.push(format!("{name} = {expression}"));
        self
    }

    /// Adds `value` to the number `attribute` (which starts at 0).
    pub fn add(mut self, attribute: &str, value: AttributeValue) -> Self {
        let name = self.placeholder(attribute);
        let placeholder = format!(":add_{attribute}");
        self.add.push(format!("{name} {placeholder}"));
        self.values.insert(placeholder, value);
        self
    }

    /// Removes `attribute`.
    pub fn remove(mut self, attribute: &str) -> Self {
        let name = self.placeholder(attribute);
        self.remove.push(name);
        self
    }

    /// Names `attribute` (as `#attribute`) for the condition without changing it.
    pub fn name(mut self, attribute: &str) -> Self {
        self.placeholder(attribute);
        self
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Writes only if `condition` holds; it may use `#attribute` for any attribute the
    /// changes name, and the values given with [`value`](Self::value).
    pub fn only_if(mut self, condition: &str) -> Self {
        self.condition = Some(condition.to_owned());
        self
    }

    /// A value the condition or a [`set_with`](Self::set_with) clause uses, e.g. `:expected`.
    pub fn value(mut self, placeholder: &str, value: AttributeValue) -> Self {
        self.values.insert(placeholder.to_owned(), value);
        self
    }

    /// The update expression, e.g. `SET #a = :a ADD #c :add_c`.
    pub fn expression(&self) -> String {
        let mut clauses = Vec::new();
        for (verb, parts) in [
            ("SET", &self.set),
            ("ADD", &self.add),
            ("REMOVE", &self.remove),
        ] {
            if !parts.is_empty() {
                clauses.push(format!("{verb} {}", parts.join(", ")));
            }
        }
        clauses.join(" ")
    }
}

/// Something an update can be applied to: a single `UpdateItem` or a transaction's update.
pub(crate) trait Apply: Sized {
    /// The builder with `changes`' expression, condition, names and values.
    fn apply(self, changes: Changes) -> Self;
}

macro_rules! apply_to {
    ($builder:ty) => {
        impl Apply for $builder {
            fn apply(self, changes: Changes) -> Self {
                let expression = changes.expression();
                self.update_expression(expression)
                    .set_condition_expression(changes.condition)
                    .set_expression_attribute_names(
                        (!changes.names.is_empty()).then_some(changes.names),
                    )
                    .set_expression_attribute_values(
                        (!changes.values.is_empty()).then_some(changes.values),
                    )
            }
        }
    };
}

apply_to!(UpdateItemFluentBuilder);
apply_to!(UpdateBuilder);

#[cfg(test)]
mod tests {
    use super::*;

    fn s(value: &str) -> AttributeValue {
        AttributeValue::S(value.to_owned())
    }

    #[test]
    fn clauses_are_grouped_by_verb_and_every_attribute_is_a_placeholder() {
        let changes = Changes::new()
            .set("name", s("n"))
            .set("slug", s("s"))
            .add("version", AttributeValue::N("1".into()))
            .set_with("epoch", "if_not_exists(#epoch, :zero) + :one")
            .remove("ttl")
            .value(":zero", AttributeValue::N("0".into()))
            .only_if("#version = :expected");
        assert_eq!(
            changes.expression(),
            "SET #name = :name, #slug = :slug, #epoch = if_not_exists(#epoch, :zero) + :one \
             ADD #version :add_version REMOVE #ttl"
        );
        assert_eq!(changes.names.len(), 5);
        assert_eq!(changes.names["#epoch"], "epoch");
        assert_eq!(
            changes
                .values
                .keys()
                .collect::<std::collections::BTreeSet<_>>(),
            [":add_version", ":name", ":slug", ":zero"]
                .iter()
                .map(|k| k.to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .iter()
                .collect()
        );
        assert_eq!(changes.condition.as_deref(), Some("#version = :expected"));
    }
}

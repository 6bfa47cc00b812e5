//! Lists and ids as the file and the environment spell them: a TOML list (`["a", "b"]`) or, from an
//! environment variable, one comma-separated string (`a,b`).

use serde::{Deserialize, Deserializer, Serializer};

/// A list of values, each parsed by `parse`.
pub fn deserialize<'de, D, T>(deserializer: D, parse: fn(&str) -> Result<T, String>) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    let items = match ListOrCsv::deserialize(deserializer)
        .map_err(|_| serde::de::Error::custom("expected a list of strings or a comma-separated string"))?
    {
        ListOrCsv::List(items) => items,
        ListOrCsv::Csv(csv) => csv.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
    };
    items.iter().map(|item| parse(item).map_err(serde::de::Error::custom)).collect()
}

/// A list of values written as their `Display` text.
pub fn serialize<S: Serializer, T: ToString>(items: &[T], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(items.iter().map(ToString::to_string))
}

/// A list of account ids, one id, or a comma-separated string of them (as environment variables give).
pub fn deserialize_account_ids<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        List(Vec<i64>),
        One(i64),
        Csv(String),
    }
    match Ids::deserialize(deserializer)
        .map_err(|_| serde::de::Error::custom("expected a list of account ids or a comma-separated string"))?
    {
        Ids::List(ids) => Ok(ids),
        Ids::One(id) => Ok(vec![id]),
        Ids::Csv(csv) => csv
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|id| id.parse().map_err(|_| serde::de::Error::custom(format!("`{id}` is not an account id"))))
            .collect(),
    }
}

/// Private ranges (`10.0.0.0/8`, `fd00::/8`).
pub mod cidrs {
    use ipnet::IpNet;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(items: &[IpNet], serializer: S) -> Result<S::Ok, S::Error> {
        super::serialize(items, serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
        super::deserialize(deserializer, |text| {
            text.parse().map_err(|_| format!("`{text}` is not a CIDR range like 10.0.0.0/8 or fd00::/8"))
        })
    }
}

//! String fields take only strings, as Envoy's proto JSON parser has them.
//!
//! serde_yaml_ng hands any scalar to a visitor that asks for a string (`deserialize_str`),
//! whatever it would resolve the scalar to: `stat_prefix: 5` or (once [`super::rewrite`] has
//! respelled it) `stat_prefix: true` read as the strings `"5"` and `"true"`. Envoy sees a
//! JSON number or boolean there and refuses it. [`Strict`] wraps the deserializer and asks
//! for any value instead wherever a value (never a mapping key: keys are strings in Envoy
//! too) is wanted as a string, so the visitor gets the resolved scalar and refuses what is
//! not a string. Everything else is forwarded untouched, with the nested sequences, mappings
//! and options wrapped in turn.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A deserializer whose string requests for values resolve the scalar first.
pub(crate) struct Strict<D>(pub D);

macro_rules! forward {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.0.$method(Wrap(visitor))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_bytes deserialize_byte_buf deserialize_option deserialize_unit
        deserialize_seq deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Wrap(visitor))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Wrap(visitor))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_unit_struct(name, Wrap(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_newtype_struct(name, Wrap(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple(len, Wrap(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple_struct(name, len, Wrap(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_struct(name, fields, Wrap(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, Wrap(visitor))
    }
}

/// A visitor whose nested deserializers are [`Strict`].
struct Wrap<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
        self.0.visit_bool(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
        self.0.visit_i64(v)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<V::Value, E> {
        self.0.visit_i128(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
        self.0.visit_u64(v)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<V::Value, E> {
        self.0.visit_u128(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        self.0.visit_f64(v)
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<V::Value, E> {
        self.0.visit_char(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        match lenient(&self.0, v) {
            Some(Lenient::Bool(b)) => self.0.visit_bool(b),
            Some(Lenient::Int(i)) => visit_int(self.0, i),
            Some(Lenient::Float(f)) => self.0.visit_f64(f),
            None => self.0.visit_str(v),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        match lenient(&self.0, v) {
            Some(_) => self.visit_str(v),
            None => self.0.visit_borrowed_str(v),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        match lenient(&self.0, &v) {
            Some(_) => self.visit_str(&v),
            None => self.0.visit_string(v),
        }
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.0.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.0.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        self.0.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(Strict(d))
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit()
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_newtype_struct(Strict(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(Seq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(Map(map))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.0.visit_enum(data)
    }
}

/// A seed whose deserializer is [`Strict`].
struct Seed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Strict(d))
    }
}

/// A sequence whose elements are read [`Strict`]ly.
struct Seq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// A mapping whose values (not keys) are read [`Strict`]ly.
struct Map<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// A string the proto JSON parser Envoy uses reads as another scalar where a boolean or an
/// integer is wanted, and prost-reflect does not: for a `bool` field, what `absl::SimpleAtob`
/// takes (`"yes"`, `"Y"`, `"1"`, `"f"`, ...); for an integer field, a hexadecimal string
/// (`"0x10"`) or a finite number in another notation (`"1e3"`, `"1.0"`; the field then
/// refuses a fraction or an out-of-range value as for a JSON number).
enum Lenient {
    Bool(bool),
    Int(i128),
    Float(f64),
}

/// What the visitor `v` wants, told by its `expecting` text: prost-reflect's visitors say
/// "a boolean" and "a 32-bit unsigned integer or decimal string" and the like (a unit test
/// pins this down).
fn lenient<'de, V: Visitor<'de>>(visitor: &V, s: &str) -> Option<Lenient> {
    let mut expecting = Prefix::default();
    let _ = fmt::Write::write_fmt(&mut expecting, format_args!("{}", Expecting(visitor)));
    let expecting = expecting.as_str();
    if expecting == "a boolean" {
        return simple_atob(s).map(Lenient::Bool);
    }
    if !(expecting.starts_with("a 32-bit ") || expecting.starts_with("a 64-bit "))
        || !expecting.contains("integer")
        || s.trim() != s
        || s.parse::<i128>().is_ok()
    {
        return None;
    }
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        let n = i128::from_str_radix(hex, 16).ok()?;
        return Some(Lenient::Int(if negative { -n } else { n }));
    }
    s.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Lenient::Float)
}

/// `absl::SimpleAtob`: its true and false words, in any case.
fn simple_atob(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

fn visit_int<'de, V: Visitor<'de>, E: de::Error>(visitor: V, i: i128) -> Result<V::Value, E> {
    if let Ok(u) = u64::try_from(i) {
        visitor.visit_u64(u)
    } else if let Ok(n) = i64::try_from(i) {
        visitor.visit_i64(n)
    } else {
        visitor.visit_i128(i)
    }
}

/// A visitor's `expecting` text.
struct Expecting<'a, V>(&'a V);

impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }
}

/// The first bytes written to it, without allocating.
struct Prefix {
    buf: [u8; 48],
    len: usize,
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl Prefix {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for Prefix {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let take = s.len().min(self.buf.len() - self.len);
        // Whole characters only, so the prefix stays UTF-8.
        let take = (0..=take)
            .rev()
            .find(|&n| s.is_char_boundary(n))
            .unwrap_or(0);
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::{DeserializeOptions, DynamicMessage};

    /// The visitors' wording this module relies on is prost-reflect's: a change there must
    /// fail here.
    #[test]
    fn prost_reflect_visitors_are_recognised() {
        let desc = crate::descriptors::pool()
            .get_message_by_name("envoy.config.cluster.v3.Cluster")
            .expect("Cluster");
        let read = |yaml: &str| {
            let de = serde_yaml_ng::Deserializer::from_str(yaml);
            DynamicMessage::deserialize_with_options(
                desc.clone(),
                Strict(de),
                &DeserializeOptions::new(),
            )
            .map(|m| {
                m.transcode_to::<crate::envoy::config::cluster::v3::Cluster>()
                    .expect("transcode")
            })
        };
        let c = read(
            "ignore_health_on_host_removal: \"yes\"\nper_connection_buffer_limit_bytes: \"1e3\"\n",
        )
        .expect("lenient");
        assert!(c.ignore_health_on_host_removal);
        assert_eq!(
            c.per_connection_buffer_limit_bytes.map(|w| w.value),
            Some(1000)
        );
        let c = read(
            "per_connection_buffer_limit_bytes: \"0x10\"\nignore_health_on_host_removal: \"F\"\n",
        )
        .expect("lenient");
        assert!(!c.ignore_health_on_host_removal);
        assert_eq!(
            c.per_connection_buffer_limit_bytes.map(|w| w.value),
            Some(16)
        );
        assert!(read("per_connection_buffer_limit_bytes: \"1.5\"\n").is_err());
        assert!(read("ignore_health_on_host_removal: \"on\"\n").is_err());
        // A string field keeps such strings.
        assert_eq!(
            read("alt_stat_name: \"1e3\"\n")
                .expect("string")
                .alt_stat_name,
            "1e3"
        );
    }
}

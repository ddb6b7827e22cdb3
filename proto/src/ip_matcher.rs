//! `xds.type.matcher.v3.IPMatcher` (`xds/type/matcher/v3/ip.proto`), which envoy-types
//! does not generate: the message, and its descriptor for the pool (so that YAML and
//! JSON configs carrying it in an `Any` convert).

use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
use prost_reflect::prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};

use crate::xds::core::v3::CidrRange;
use crate::xds::r#type::matcher::v3::matcher::OnMatch;

/// A matcher tree's `custom_match` on an address: range matchers, the most specific
/// range holding the address first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IpMatcher {
    /// `range_matchers`.
    #[prost(message, repeated, tag = "1")]
    pub range_matchers: Vec<IpRangeMatcher>,
}

/// `IPMatcher.IPRangeMatcher`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IpRangeMatcher {
    /// `ranges`: an address in any of them matches.
    #[prost(message, repeated, tag = "1")]
    pub ranges: Vec<CidrRange>,
    /// `on_match`.
    #[prost(message, optional, tag = "2")]
    pub on_match: Option<OnMatch>,
    /// `exclusive`: tried only when no more specific range matcher was.
    #[prost(bool, tag = "3")]
    pub exclusive: bool,
}

impl prost::Name for IpMatcher {
    const NAME: &'static str = "IPMatcher";
    const PACKAGE: &'static str = "xds.type.matcher.v3";
}

/// The descriptor of `ip.proto`, its dependencies named as `cidr` and `matcher` (the
/// files holding `xds.core.v3.CidrRange` and `xds.type.matcher.v3.Matcher`).
pub(crate) fn file(cidr: &str, matcher: &str) -> FileDescriptorProto {
    let field =
        |name: &str, json: &str, number, label: Label, ty: Type, type_name: Option<&str>| {
            FieldDescriptorProto {
                name: Some(name.into()),
                json_name: Some(json.into()),
                number: Some(number),
                label: Some(label as i32),
                r#type: Some(ty as i32),
                type_name: type_name.map(Into::into),
                ..Default::default()
            }
        };
    let range = DescriptorProto {
        name: Some("IPRangeMatcher".into()),
        field: vec![
            field(
                "ranges",
                "ranges",
                1,
                Label::Repeated,
                Type::Message,
                Some(".xds.core.v3.CidrRange"),
            ),
            field(
                "on_match",
                "onMatch",
                2,
                Label::Optional,
                Type::Message,
                Some(".xds.type.matcher.v3.Matcher.OnMatch"),
            ),
            field(
                "exclusive",
                "exclusive",
                3,
                Label::Optional,
                Type::Bool,
                None,
            ),
        ],
        ..Default::default()
    };
    FileDescriptorProto {
        name: Some("courier/xds/type/matcher/v3/ip.proto".into()),
        package: Some("xds.type.matcher.v3".into()),
        dependency: vec![cidr.into(), matcher.into()],
        message_type: vec![DescriptorProto {
            name: Some("IPMatcher".into()),
            field: vec![field(
                "range_matchers",
                "rangeMatchers",
                1,
                Label::Repeated,
                Type::Message,
                Some(".xds.type.matcher.v3.IPMatcher.IPRangeMatcher"),
            )],
            nested_type: vec![range],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_ip_matcher_converts_from_yaml() {
        let any: crate::google::protobuf::Any = crate::from_yaml(
            r#"
"@type": type.googleapis.com/xds.type.matcher.v3.IPMatcher
range_matchers:
- ranges: [{ address_prefix: 10.0.0.0, prefix_len: 8 }]
  exclusive: true
  on_match: { action: { name: a, typed_config: { "@type": type.googleapis.com/google.protobuf.StringValue, value: x } } }
"#,
        )
        .expect("converts");
        let m: super::IpMatcher = crate::unpack_any(&any).expect("decodes");
        assert_eq!(m.range_matchers.len(), 1);
        assert!(m.range_matchers[0].exclusive);
        assert_eq!(m.range_matchers[0].ranges[0].address_prefix, "10.0.0.0");
        assert!(m.range_matchers[0].on_match.is_some());
    }
}

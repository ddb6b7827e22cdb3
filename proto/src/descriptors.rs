//! The descriptor pool of every Envoy v3 message envoy-types knows, plus the two
//! `TypedStruct` messages Envoy accepts in any `typed_config` (see [`crate::typed_struct`]).

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
use prost_reflect::prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
};
use prost_reflect::DescriptorPool;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// The process-wide pool, decoded once on first use.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The bytes are envoy-types' own build output, checked by this crate's tests; a
        // failure here is a build defect, not input.
        let mut set = FileDescriptorSet::decode(DESCRIPTORS)
            .expect("envoy-types ships a valid descriptor set");
        // Comments and source positions are a third of the set and nothing here reads
        // them; the pool would keep them for the life of the process.
        for file in &mut set.file {
            file.source_code_info = None;
        }
        let mut pool = DescriptorPool::from_file_descriptor_set(set)
            .expect("envoy-types ships a valid descriptor set");
        for (package, file) in [
            ("xds.type.v3", "courier/xds/type/v3/typed_struct.proto"),
            ("udpa.type.v1", "courier/udpa/type/v1/typed_struct.proto"),
        ] {
            let name = format!("{package}.TypedStruct");
            if pool.get_message_by_name(&name).is_none() {
                // Cannot fail for these fixed definitions; if it did, `@type: ...TypedStruct`
                // would simply be reported as an unknown type.
                let _ = pool.add_file_descriptor_proto(typed_struct_file(package, file));
            }
        }
        let file_of = |message: &str| {
            pool.get_message_by_name(message)
                .map(|m| m.parent_file().name().to_owned())
        };
        if let (Some(cidr), Some(matcher), None) = (
            file_of("xds.core.v3.CidrRange"),
            file_of("xds.type.matcher.v3.Matcher"),
            file_of("xds.type.matcher.v3.IPMatcher"),
        ) {
            // As above: a failure leaves `IPMatcher` an unknown type.
            let _ = pool.add_file_descriptor_proto(crate::ip_matcher::file(&cidr, &matcher));
        }
        pool
    })
}

/// `message TypedStruct { string type_url = 1; google.protobuf.Struct value = 2; }`
fn typed_struct_file(package: &str, file: &str) -> FileDescriptorProto {
    let field =
        |name: &str, json: &str, number, ty: Type, type_name: Option<&str>| FieldDescriptorProto {
            name: Some(name.into()),
            json_name: Some(json.into()),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(ty as i32),
            type_name: type_name.map(Into::into),
            ..Default::default()
        };
    FileDescriptorProto {
        name: Some(file.into()),
        package: Some(package.into()),
        dependency: vec!["google/protobuf/struct.proto".into()],
        message_type: vec![DescriptorProto {
            name: Some("TypedStruct".into()),
            field: vec![
                field("type_url", "typeUrl", 1, Type::String, None),
                field(
                    "value",
                    "value",
                    2,
                    Type::Message,
                    Some(".google.protobuf.Struct"),
                ),
            ],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

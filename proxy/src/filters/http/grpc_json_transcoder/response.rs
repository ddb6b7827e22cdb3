//! A unary call's answer as JSON: the message printed with the configured print options,
//! the gRPC status made the HTTP status (grpc-httpjson-transcoding's
//! `ResponseToJsonTranslator`, Envoy's `doTrailers` and `maybeConvertGrpcStatus`).

use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};

/// `print_options`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PrintOptions {
    pub add_whitespace: bool,
    pub always_print_primitive_fields: bool,
    pub always_print_enums_as_ints: bool,
    pub preserve_proto_field_names: bool,
}

impl PrintOptions {
    /// `message` (wire bytes of `desc`) as JSON; `None` when it does not decode.
    pub(super) fn print(&self, desc: &MessageDescriptor, message: &[u8]) -> Option<Vec<u8>> {
        let msg = DynamicMessage::decode(desc.clone(), message).ok()?;
        self.print_message(&msg)
    }

    /// A message as JSON.
    pub(super) fn print_message(&self, msg: &DynamicMessage) -> Option<Vec<u8>> {
        let options = SerializeOptions::new()
            .skip_default_fields(!self.always_print_primitive_fields)
            .use_enum_numbers(self.always_print_enums_as_ints)
            .use_proto_field_name(self.preserve_proto_field_names);
        let mut out = Vec::new();
        if self.add_whitespace {
            // Protobuf's printer indents by one space.
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            msg.serialize_with_options(&mut ser, &options).ok()?;
            out.push(b'\n');
        } else {
            let mut ser = serde_json::Serializer::new(&mut out);
            msg.serialize_with_options(&mut ser, &options).ok()?;
        }
        Some(out)
    }
}

/// The HTTP status for a gRPC status (Envoy's `Grpc::Utility::grpcToHttpStatus`).
pub(super) fn grpc_to_http_status(status: u64) -> u16 {
    match status {
        0 => 200,
        1 => 499,
        2 => 500,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 400,
        10 => 409,
        11 => 400,
        12 => 501,
        13 => 500,
        14 => 503,
        15 => 500,
        16 => 401,
        _ => 500,
    }
}

/// A `grpc-status` value as Envoy reads it: a number up to `i32::MAX`, else invalid.
pub(super) fn parse_status(v: &[u8]) -> Option<u64> {
    let n: u64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    (n <= i32::MAX as u64).then_some(n)
}

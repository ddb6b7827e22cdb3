//! `Any` packing/unpacking, type URLs and resource names.

use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::config::core::v3::TypedExtensionConfig;
use courier_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use courier_proto::envoy::config::listener::v3::Listener;
use courier_proto::envoy::config::route::v3::{
    RouteConfiguration, ScopedRouteConfiguration, VirtualHost,
};
use courier_proto::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use courier_proto::envoy::extensions::transport_sockets::tls::v3::Secret;
use courier_proto::envoy::service::discovery::v3::Resource;
use courier_proto::envoy::service::runtime::v3::Runtime;
use courier_proto::google::protobuf::Any;
use courier_proto::{
    pack_any, resource_name, type_url, unpack_any, unwrap_resource, AnyError, ResourceError,
    ResourceMessage, ResourceType,
};
use prost::{Message, Name};
use std::borrow::Cow;

#[test]
fn type_urls_match_prost() {
    let pairs = [
        (type_url::LISTENER, Listener::type_url()),
        (type_url::CLUSTER, Cluster::type_url()),
        (
            type_url::ROUTE_CONFIGURATION,
            RouteConfiguration::type_url(),
        ),
        (
            type_url::SCOPED_ROUTE_CONFIGURATION,
            ScopedRouteConfiguration::type_url(),
        ),
        (type_url::VIRTUAL_HOST, VirtualHost::type_url()),
        (
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            ClusterLoadAssignment::type_url(),
        ),
        (type_url::SECRET, Secret::type_url()),
        (type_url::RUNTIME, Runtime::type_url()),
        (
            type_url::TYPED_EXTENSION_CONFIG,
            TypedExtensionConfig::type_url(),
        ),
        (type_url::RESOURCE, Resource::type_url()),
    ];
    for (constant, from_prost) in pairs {
        assert_eq!(constant, from_prost);
        assert!(constant.starts_with(type_url::PREFIX));
        // Every resource type is in the descriptor pool.
        let name = type_url::message_name(constant);
        assert!(
            courier_proto::descriptors::pool()
                .get_message_by_name(name)
                .is_some(),
            "{name}"
        );
    }
    assert_eq!(
        type_url::message_name(type_url::CLUSTER),
        "envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(type_url::message_name("no.slash.Name"), "no.slash.Name");
}

fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        ..Default::default()
    }
}

#[test]
fn pack_and_unpack() {
    let c = cluster("echo");
    let any = pack_any(&c);
    assert_eq!(any.type_url, type_url::CLUSTER);
    assert_eq!(unpack_any::<Cluster>(&any).unwrap(), c);
    // A type URL with another prefix names the same message.
    let other = Any {
        type_url: "example.com/envoy.config.cluster.v3.Cluster".into(),
        value: any.value.clone(),
    };
    assert_eq!(unpack_any::<Cluster>(&other).unwrap(), c);
}

#[test]
fn unpack_wrong_type() {
    let any = pack_any(&cluster("echo"));
    let err = unpack_any::<Listener>(&any).unwrap_err();
    assert_eq!(
        err,
        AnyError::WrongType {
            expected: "envoy.config.listener.v3.Listener".into(),
            actual: type_url::CLUSTER.into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "expected envoy.config.listener.v3.Listener, got type URL \"type.googleapis.com/envoy.config.cluster.v3.Cluster\""
    );
}

#[test]
fn unpack_garbage() {
    let any = Any {
        type_url: type_url::CLUSTER.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    assert!(matches!(
        unpack_any::<Cluster>(&any),
        Err(AnyError::Decode { .. })
    ));
}

#[test]
fn typed_config_any_round_trips_through_yaml() {
    let yaml = "\
name: l
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: s
      cluster: c
";
    let l: Listener = courier_proto::from_yaml(yaml).unwrap();
    let json = courier_proto::to_json(&l);
    assert_eq!(
        json["filter_chains"][0]["filters"][0]["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    );
    let Some(courier_proto::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
        &l.filter_chains[0].filters[0].config_type
    else {
        panic!("typed_config");
    };
    let tcp: TcpProxy = unpack_any(any).unwrap();
    assert_eq!(tcp.stat_prefix, "s");
    assert!(unpack_any::<Cluster>(any).is_err());
}

#[test]
fn names_of_each_resource_type() {
    let cases: Vec<(&str, Any)> = vec![
        (type_url::CLUSTER, pack_any(&cluster("c1"))),
        (
            type_url::LISTENER,
            pack_any(&Listener {
                name: "l1".into(),
                ..Default::default()
            }),
        ),
        (
            type_url::ROUTE_CONFIGURATION,
            pack_any(&RouteConfiguration {
                name: "r1".into(),
                ..Default::default()
            }),
        ),
        (
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            pack_any(&ClusterLoadAssignment {
                cluster_name: "cla1".into(),
                ..Default::default()
            }),
        ),
        (
            type_url::SECRET,
            pack_any(&Secret {
                name: "s1".into(),
                ..Default::default()
            }),
        ),
        (
            type_url::VIRTUAL_HOST,
            pack_any(&VirtualHost {
                name: "v1".into(),
                ..Default::default()
            }),
        ),
    ];
    for (url, any) in cases {
        let name = resource_name(url, &any).unwrap();
        assert!(name.ends_with('1'), "{url}: {name}");
    }
}

#[test]
fn names_through_resource_wrapper() {
    let inner = pack_any(&ClusterLoadAssignment {
        cluster_name: "backend".into(),
        ..Default::default()
    });
    let wrapped = pack_any(&Resource {
        resource: Some(inner.clone()),
        ..Default::default()
    });
    assert_eq!(
        resource_name(type_url::CLUSTER_LOAD_ASSIGNMENT, &wrapped).unwrap(),
        "backend"
    );
    // The wrapper's own name wins, as in Envoy.
    let named = pack_any(&Resource {
        name: "alias".into(),
        resource: Some(inner),
        ..Default::default()
    });
    assert_eq!(
        resource_name(type_url::CLUSTER_LOAD_ASSIGNMENT, &named).unwrap(),
        "alias"
    );
    let empty = pack_any(&Resource::default());
    assert_eq!(
        resource_name(type_url::CLUSTER, &empty),
        Err(ResourceError::EmptyWrapper)
    );
    // A wrapper around the wrong type.
    let wrong = pack_any(&Resource {
        resource: Some(pack_any(&cluster("c"))),
        ..Default::default()
    });
    assert!(matches!(
        resource_name(type_url::LISTENER, &wrong),
        Err(ResourceError::WrongType { .. })
    ));
}

#[test]
fn resource_name_errors() {
    let any = pack_any(&cluster("c"));
    assert_eq!(
        resource_name(type_url::LISTENER, &any).unwrap_err().to_string(),
        "expected a resource of type \"type.googleapis.com/envoy.config.listener.v3.Listener\", got \"type.googleapis.com/envoy.config.cluster.v3.Cluster\""
    );
    let tcp = pack_any(&TcpProxy::default());
    assert_eq!(
        resource_name(&TcpProxy::type_url(), &tcp),
        Err(ResourceError::UnsupportedType(TcpProxy::type_url()))
    );
    let garbage = Any {
        type_url: type_url::CLUSTER.into(),
        value: vec![0x0a, 0xff],
    };
    assert!(matches!(
        resource_name(type_url::CLUSTER, &garbage),
        Err(ResourceError::Decode { .. })
    ));
    // Encoded bytes of a wrapper that is not a wrapper.
    let bad_wrapper = Any {
        type_url: type_url::RESOURCE.into(),
        value: cluster("c").encode_to_vec(),
    };
    assert!(resource_name(type_url::CLUSTER, &bad_wrapper).is_err());
}

#[test]
fn resource_types_map_type_urls_and_names() {
    let prost_urls = [
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        Listener::type_url(),
        RouteConfiguration::type_url(),
        Secret::type_url(),
        Runtime::type_url(),
    ];
    let plurals = [
        "clusters",
        "endpoints",
        "listeners",
        "routes",
        "secrets",
        "runtimes",
    ];
    for (i, kind) in ResourceType::ALL.into_iter().enumerate() {
        assert_eq!(kind.index(), i);
        assert_eq!(kind.type_url(), prost_urls[i]);
        assert_eq!(ResourceType::from_type_url(kind.type_url()), Some(kind));
        assert_eq!(kind.plural(), plurals[i]);
        assert_eq!(kind.to_string(), plurals[i]);
        assert_eq!(ResourceType::from_plural(plurals[i]), Some(kind));
    }
    // ADS push order: make before break.
    assert!(ResourceType::Cluster < ResourceType::Endpoint);
    assert!(ResourceType::Listener < ResourceType::Route);
    assert!(ResourceType::Cluster.is_wildcard_type() && ResourceType::Listener.is_wildcard_type());
    assert!(!ResourceType::Endpoint.is_wildcard_type());
    // Type URLs are compared exactly; other types are not resource types.
    for other in [
        type_url::RESOURCE,
        type_url::VIRTUAL_HOST,
        "envoy.config.cluster.v3.Cluster",
        "example.com/envoy.config.cluster.v3.Cluster",
        "",
    ] {
        assert_eq!(ResourceType::from_type_url(other), None, "{other}");
    }
    assert_eq!(ResourceType::from_plural("cluster"), None);
    // REST paths are Envoy's: the plural, but `runtime` for RTDS.
    assert_eq!(ResourceType::Runtime.rest_name(), "runtime");
    assert_eq!(ResourceType::Cluster.rest_name(), "clusters");
    assert_eq!(
        ResourceType::from_rest_name("runtime"),
        Some(ResourceType::Runtime)
    );
    assert_eq!(ResourceType::from_rest_name("runtimes"), None);
}

#[test]
fn resource_types_decode_their_messages() {
    let anys = [
        pack_any(&cluster("c1")),
        pack_any(&ClusterLoadAssignment {
            cluster_name: "e1".into(),
            ..Default::default()
        }),
        pack_any(&Listener {
            name: "l1".into(),
            ..Default::default()
        }),
        pack_any(&RouteConfiguration {
            name: "r1".into(),
            ..Default::default()
        }),
        pack_any(&Secret {
            name: "s1".into(),
            ..Default::default()
        }),
        pack_any(&Runtime {
            name: "rt1".into(),
            ..Default::default()
        }),
    ];
    assert_eq!(anys.len(), ResourceType::ALL.len());
    for (kind, any) in ResourceType::ALL.into_iter().zip(&anys) {
        let message = kind.decode(&any.value).unwrap();
        assert_eq!(message.resource_type(), kind);
        assert!(message.name().ends_with('1'), "{kind}: {}", message.name());
    }
    assert!(ResourceType::Cluster.decode(&[0x0a, 0xff]).is_err());
}

#[test]
fn unwrap_resource_takes_a_resource_out_of_its_wrapper() {
    // Not wrapped: the Any itself, borrowed; no wrapper name or version.
    let any = pack_any(&cluster("c1"));
    let r = unwrap_resource(ResourceType::Cluster, &any).unwrap();
    assert!(matches!(r.any, Cow::Borrowed(_)));
    assert_eq!(*r.any, any);
    assert_eq!(r.name, "c1");
    assert_eq!((r.wrapper_name.as_str(), r.version.as_str()), ("", ""));
    assert!(matches!(&r.message, ResourceMessage::Cluster(c) if c.name == "c1"));

    // Wrapped: the inner Any, the wrapper's name and version; the name is the message's.
    let wrapped = pack_any(&Resource {
        name: "alias".into(),
        version: "v7".into(),
        resource: Some(any.clone()),
        ..Default::default()
    });
    let r = unwrap_resource(ResourceType::Cluster, &wrapped).unwrap();
    assert_eq!(*r.any, any);
    assert_eq!(r.name, "c1");
    assert_eq!(r.wrapper_name, "alias");
    assert_eq!(r.version, "v7");
}

#[test]
fn unwrap_resource_errors() {
    let any = pack_any(&cluster("c1"));
    assert_eq!(
        unwrap_resource(ResourceType::Listener, &any),
        Err(ResourceError::WrongType {
            expected: type_url::LISTENER.into(),
            actual: type_url::CLUSTER.into(),
        })
    );
    // The type URL must match exactly, as Envoy's mux requires.
    let other_host = Any {
        type_url: "example.com/envoy.config.cluster.v3.Cluster".into(),
        value: any.value.clone(),
    };
    assert!(matches!(
        unwrap_resource(ResourceType::Cluster, &other_host),
        Err(ResourceError::WrongType { .. })
    ));
    let garbage = Any {
        type_url: type_url::CLUSTER.into(),
        value: vec![0x0a, 0xff],
    };
    assert!(matches!(
        unwrap_resource(ResourceType::Cluster, &garbage),
        Err(ResourceError::Decode { type_url, .. }) if type_url == type_url::CLUSTER
    ));
    // A wrapper that does not decode is reported as the wrapper.
    let bad_wrapper = Any {
        type_url: type_url::RESOURCE.into(),
        value: vec![0x0a, 0xff],
    };
    assert!(matches!(
        unwrap_resource(ResourceType::Cluster, &bad_wrapper),
        Err(ResourceError::Decode { type_url, .. }) if type_url == type_url::RESOURCE
    ));
    // A wrapper must hold a resource, named or not.
    let named_only = pack_any(&Resource {
        name: "c1".into(),
        ..Default::default()
    });
    assert_eq!(
        unwrap_resource(ResourceType::Cluster, &named_only),
        Err(ResourceError::MissingResource)
    );
    // One level only: a wrapper in a wrapper is of the wrong type.
    let nested = pack_any(&Resource {
        resource: Some(pack_any(&Resource {
            resource: Some(any),
            ..Default::default()
        })),
        ..Default::default()
    });
    assert!(matches!(
        unwrap_resource(ResourceType::Cluster, &nested),
        Err(ResourceError::WrongType { actual, .. }) if actual == type_url::RESOURCE
    ));
}

/// An empty `Any` (`{}`), as Envoy Gateway writes `FilterConfig { config: {} }`: read as
/// an unset field, in YAML and JSON; a `{}` in a map of `Any`s stays an error, as Envoy
/// refuses it.
#[test]
fn an_empty_any_reads_as_unset() {
    use courier_proto::envoy::config::route::v3::FilterConfig;
    let yaml = r#"
virtual_hosts:
- name: a
  domains: ["*"]
  typed_per_filter_config:
    envoy.filters.http.jwt_authn:
      "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
      config: {}
"#;
    let rc: RouteConfiguration = courier_proto::from_yaml(yaml).expect("an empty Any is valid");
    let any = &rc.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.jwt_authn"];
    let fc: FilterConfig = courier_proto::unpack_any(any).expect("a FilterConfig");
    assert_eq!(fc.config, None);
    let json = r#"{"virtual_hosts": [{"name": "a", "domains": ["*"], "typed_per_filter_config": {"x": {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}}}]}"#;
    let rc: RouteConfiguration = courier_proto::from_json(json).expect("in JSON too");
    assert_eq!(rc.virtual_hosts[0].typed_per_filter_config.len(), 1);
    let in_map = "virtual_hosts:\n- name: a\n  domains: [\"*\"]\n  typed_per_filter_config:\n    envoy.filters.http.cors: {}\n";
    let err = courier_proto::from_yaml::<RouteConfiguration>(in_map).expect_err("refused");
    assert!(err.to_string().contains("@type"), "{err}");
}

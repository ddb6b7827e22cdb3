use courier_proto::envoy::config::bootstrap::v3::Bootstrap;

#[test]
fn loads_static_tcp_example() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/static-tcp.yaml")).unwrap();
    let b: Bootstrap = courier_proto::from_yaml(&text).unwrap();
    let sr = b.static_resources.unwrap();
    assert_eq!(sr.clusters[0].name, "echo");
    println!("{}", courier_proto::to_json(&sr.listeners[0]));
    let bad = text.replace("lb_endpoints:", "lb_endpoint:");
    let err = courier_proto::from_yaml::<Bootstrap>(&bad).unwrap_err();
    println!("{err}");
    let bad = text.replace("0.25s", "abc");
    println!("{}", courier_proto::from_yaml::<Bootstrap>(&bad).unwrap_err());
    let bad = text.replace("ROUND_ROBIN", "ROUND");
    println!("{}", courier_proto::from_yaml::<Bootstrap>(&bad).unwrap_err());
    let bad = text.replace("stat_prefix: tcp_in", "stat_prefx: tcp_in");
    println!("{}", courier_proto::from_yaml::<Bootstrap>(&bad).unwrap_err());
}

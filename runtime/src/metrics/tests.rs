use super::*;

static METHODS: &[aicore_proto::MethodInfo] = &[aicore_proto::MethodInfo {
    domain: "demo",
    service: "aicore.demo.v1.Demo",
    name: "Get",
    rpc: "get",
    subject: "svc.demo.v1.get",
    input: "",
    output: "",
    server_streaming: false,
    idempotency_key: 0,
    policy: aicore_proto::Policy {
        access: aicore_proto::Access::Public,
        roles: &[],
        read_only: true,
        default_deadline_ms: 0,
    },
}];
static SERVICE: ServiceInfo = ServiceInfo {
    domain: "demo",
    name: "Demo",
    full_name: "aicore.demo.v1.Demo",
    description: "",
    methods: METHODS,
};

fn render(r: &Registry) -> String {
    futures::executor::block_on(r.render())
}

#[test]
fn calls_are_counted_by_status_with_cumulative_buckets() {
    let reg = Registry::new(true);
    let rpc = reg.rpc(&SERVICE);
    rpc.record(0, Ok(()), Duration::from_millis(3));
    rpc.record(0, Err(Code::NotFound), Duration::from_millis(30));
    rpc.record(0, Ok(()), Duration::from_secs(60));
    rpc.record(7, Ok(()), Duration::from_millis(1)); // no such RPC: ignored
    let text = render(&reg);
    assert!(
        text.contains(r#"aicore_rpc_requests_total{domain="demo",rpc="get",status="ok"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"aicore_rpc_requests_total{domain="demo",rpc="get",status="not_found"} 1"#)
    );
    assert!(
        text.contains(
            r#"aicore_rpc_duration_seconds_bucket{domain="demo",rpc="get",le="0.005"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"aicore_rpc_duration_seconds_bucket{domain="demo",rpc="get",le="0.05"} 2"#)
    );
    assert!(
        text.contains(r#"aicore_rpc_duration_seconds_bucket{domain="demo",rpc="get",le="10"} 2"#)
    );
    assert!(
        text.contains(r#"aicore_rpc_duration_seconds_bucket{domain="demo",rpc="get",le="+Inf"} 3"#)
    );
    assert!(text.contains(r#"aicore_rpc_duration_seconds_count{domain="demo",rpc="get"} 3"#));
    assert_eq!(text.matches("# TYPE aicore_rpc_requests_total").count(), 1);
    // The same domain again shares its rows.
    assert!(Arc::ptr_eq(&rpc, &reg.rpc(&SERVICE)));
}

#[test]
fn nothing_is_recorded_while_switched_off() {
    let reg = Registry::new(false);
    let rpc = reg.rpc(&SERVICE);
    rpc.record(0, Ok(()), Duration::from_millis(3));
    assert!(!render(&reg).contains("status=\"ok\""));
    reg.switch().set(true);
    rpc.record(0, Ok(()), Duration::from_millis(3));
    assert!(render(&reg).contains(r#"status="ok"} 1"#));
}

#[test]
fn label_values_are_escaped() {
    let mut e = Exposition::default();
    e.sample("m", &[("name", "a\"b\\c\nd")], 1);
    assert_eq!(e.finish(), "m{name=\"a\\\"b\\\\c\\nd\"} 1\n");
}

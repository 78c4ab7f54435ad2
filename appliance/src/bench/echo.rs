//! The runtime-echo row: one RPC answering its request body, served by the domain runtime
//! and called through the SDK, so the row is the framework's own share of a domain call.

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use aicore_proto::CallOptions;
use aicore_runtime::serve::{self, ServeOptions};

use super::BenchArgs;
use super::env::Env;
use super::load::{Baseline, Cell, measure};

/// The runtime-echo service: one RPC answering its request body.
static ECHO_METHODS: &[aicore_proto::MethodInfo] = &[aicore_proto::MethodInfo {
    domain: "bench_echo",
    service: "aicore.bench_echo.v1.BenchEcho",
    name: "Echo",
    rpc: "echo",
    subject: "svc.bench_echo.v1.echo",
    input: "",
    output: "",
    server_streaming: false,
    idempotency_key: 0,
    policy: aicore_proto::Policy {
        access: aicore_proto::Access::Public,
        roles: &[],
        read_only: false,
        default_deadline_ms: 0,
    },
}];

static ECHO_SERVICE: aicore_proto::ServiceInfo = aicore_proto::ServiceInfo {
    domain: "bench_echo",
    name: "BenchEcho",
    full_name: "aicore.bench_echo.v1.BenchEcho",
    description: "aicore bench: echoes its request",
    methods: ECHO_METHODS,
};

struct EchoService;

impl aicore_proto::Dispatch for EchoService {
    fn service(&self) -> &'static aicore_proto::ServiceInfo {
        &ECHO_SERVICE
    }
    fn call(
        &self,
        _method: usize,
        request: aicore_proto::Request<Bytes>,
    ) -> futures::future::BoxFuture<'static, Result<aicore_proto::Reply, aicore_proto::Status>>
    {
        Box::pin(async move { Ok(aicore_proto::Reply::Unary(request.body)) })
    }
}

/// The same echo through the domain runtime and the SDK (deadline header, micro service
/// API, a task per request, retries/breaker bookkeeping): the framework's own share of
/// every domain call, with no domain work.
pub(super) async fn measure_runtime_echo(
    env: &Env,
    base: &Baseline,
    args: &BenchArgs,
    stop: CancellationToken,
) -> Result<Vec<Cell>> {
    let (load, payload) = (&base.nats, &base.payload);
    let mut cells = Vec::new();
    let runtime_nats = env.connect("domains", "bench-runtime-echo").await?;
    let serving = serve::serve(
        runtime_nats.clone(),
        Arc::new(EchoService),
        ServeOptions {
            metrics: Some(env.metrics.clone()),
            ..ServeOptions::default()
        },
        stop,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    runtime_nats.flush().await?;
    let sdk = aicore_sdk::Client::new(load.clone(), Default::default());
    for &c in &args.concurrency {
        let (sdk, p) = (sdk.clone(), payload.clone());
        cells.push(
            measure(
                base,
                None,
                "sdk+runtime echo (no domain work)",
                c,
                args.seconds,
                move |_, _| {
                    let (sdk, p) = (sdk.clone(), p.clone());
                    async move {
                        use aicore_proto::Transport;
                        sdk.unary(&ECHO_METHODS[0], p, &CallOptions::default())
                            .await
                            .map(|_| ())
                    }
                },
            )
            .await,
        );
    }
    serving.stop().await;
    Ok(cells)
}

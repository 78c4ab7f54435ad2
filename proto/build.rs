//! Compiles `proto/*.proto` with protox (pure Rust, no protoc on the machine) and generates,
//! besides prost's messages, for every service: its RPC table (subjects and policies read
//! from the custom options in `common.proto`), a handler trait, a dispatching server
//! wrapper and a typed client. The encoded descriptor set is written beside them so the
//! gateway and the CLI can transcode JSON by reflection.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use prost_reflect::{DescriptorPool, DynamicMessage, Value};

/// Policy of one RPC, read from `(aicore.common.v1.policy)`.
#[derive(Default, Clone)]
struct Policy {
    access: i32,
    roles: Vec<String>,
    read_only: bool,
    default_deadline_ms: u32,
    /// Field number of the request's `idempotency_key` (0: it has none).
    idempotency_key: u32,
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let compiler = compile_contracts(&out);
    let pool = compiler.descriptor_pool();
    let (generator, services) = read_services(&pool);
    prost_build::Config::new()
        .bytes(["."])
        .service_generator(Box::new(generator))
        .include_file("_includes.rs")
        .compile_fds(compiler.file_descriptor_set())
        .expect("prost-build");
    write_service_list(&out, &services);
    write_keyed(&out, &pool);
    write_events(&out, &pool);
    compile_internal(&out);
}

/// Compiles every `proto/*.proto` and writes the encoded descriptor set to `out`.
fn compile_contracts(out: &std::path::Path) -> protox::Compiler {
    let proto_dir = PathBuf::from("proto");
    println!("cargo:rerun-if-changed=proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&proto_dir)
        .expect("read proto/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    let file_names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();

    let mut compiler = protox::Compiler::new([&proto_dir]).expect("protox include path");
    compiler.include_source_info(true).include_imports(true);
    if let Err(e) = compiler.open_files(&file_names) {
        panic!("proto compile error: {e:?}");
    }
    std::fs::write(
        out.join("descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )
    .expect("write descriptor set");
    compiler
}

/// Reads every service's description and every RPC's policy (checking that each is
/// declared), for the service generator; also returns the services' full names.
fn read_services(pool: &DescriptorPool) -> (ServiceGen, Vec<String>) {
    let policy_ext = pool
        .get_extension_by_name("aicore.common.v1.policy")
        .expect("common.proto declares the policy option");
    let service_ext = pool
        .get_extension_by_name("aicore.common.v1.service")
        .expect("common.proto declares the service option");

    let mut policies: HashMap<String, Policy> = HashMap::new();
    let mut descriptions: HashMap<String, String> = HashMap::new();
    let mut services = Vec::new();
    for svc in pool.services() {
        let pkg = svc.package_name().to_string();
        assert!(
            pkg.starts_with("aicore.") && pkg.ends_with(".v1"),
            "service {} must live in package aicore.<domain>.v1",
            svc.full_name()
        );
        let opts = svc.options();
        assert!(
            opts.has_extension(&service_ext),
            "service {} lacks option (aicore.common.v1.service)",
            svc.full_name()
        );
        let so = opts.get_extension(&service_ext);
        let so = so.as_message().expect("service option is a message");
        let desc = msg_field(so, "description")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        descriptions.insert(svc.full_name().to_string(), desc);
        services.push(svc.full_name().to_string());
        for m in svc.methods() {
            policies.insert(m.full_name().to_string(), read_policy(&m, &policy_ext));
        }
    }
    let generator = ServiceGen {
        policies,
        descriptions,
    };
    (generator, services)
}

/// The policy of RPC `m`, from its `(aicore.common.v1.policy)` option (`ext`).
fn read_policy(
    m: &prost_reflect::MethodDescriptor,
    ext: &prost_reflect::ExtensionDescriptor,
) -> Policy {
    let mo = m.options();
    assert!(
        mo.has_extension(ext),
        "rpc {} lacks option (aicore.common.v1.policy)",
        m.full_name()
    );
    let p = mo.get_extension(ext);
    let p = p.as_message().expect("policy is a message");
    let policy = Policy {
        access: msg_field(p, "access")
            .and_then(|v| v.as_enum_number())
            .unwrap_or(0),
        roles: msg_field(p, "roles")
            .and_then(|v| {
                v.as_list().map(|l| {
                    l.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default(),
        read_only: msg_field(p, "read_only")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        default_deadline_ms: msg_field(p, "default_deadline_ms")
            .and_then(|v| v.as_u32())
            .unwrap_or(0),
        idempotency_key: idempotency_key_field(&m.input()),
    };
    assert!(
        !(policy.read_only && policy.idempotency_key != 0),
        "rpc {} is read_only but its request has an idempotency_key: a read needs none",
        m.full_name()
    );
    assert!(
        policy.access != 0,
        "rpc {} has ACCESS_UNSPECIFIED",
        m.full_name()
    );
    policy
}

/// The list of every service, for the runtime, the CLI and the gateway.
fn write_service_list(out: &std::path::Path, services: &[String]) {
    let mut list = String::from("/// Every service declared in `proto/`, in name order.\n");
    list.push_str("pub static SERVICES: &[&crate::ServiceInfo] = &[\n");
    for full in services {
        let pkg = full.rsplit_once('.').unwrap().0;
        let _ = writeln!(list, "    &crate::{}::SERVICE,", pkg.replace('.', "::"));
    }
    list.push_str("];\n");
    std::fs::write(out.join("services.rs"), list).expect("write services.rs");
}

/// The Rust path of message `m` from the crate root.
fn rust_path(m: &prost_reflect::MessageDescriptor) -> String {
    format!(
        "crate::{}::{}",
        m.package_name().replace('.', "::"),
        m.name()
    )
}

/// Every request that carries an idempotency key, for the runtime's keyed writes.
fn write_keyed(out: &std::path::Path, pool: &DescriptorPool) {
    let mut keyed = String::new();
    for m in pool.all_messages() {
        if m.parent_message().is_some() || idempotency_key_field(&m) == 0 {
            continue;
        }
        let path = rust_path(&m);
        let _ = writeln!(
            keyed,
            "impl crate::Keyed for {path} {{\n    fn idempotency_key(&self) -> &str {{\n        &self.idempotency_key\n    }}\n    fn clear_idempotency_key(&mut self) {{\n        self.idempotency_key.clear();\n    }}\n}}"
        );
    }
    std::fs::write(out.join("keyed.rs"), keyed).expect("write keyed.rs");
}

/// Every message declared as an event, with its subject, for the outbox.
fn write_events(out: &std::path::Path, pool: &DescriptorPool) {
    let event_ext = pool
        .get_extension_by_name("aicore.common.v1.event")
        .expect("common.proto declares the event option");
    let mut events = String::new();
    for m in pool.all_messages() {
        let opts = m.options();
        if !opts.has_extension(&event_ext) {
            continue;
        }
        assert!(
            m.parent_message().is_none(),
            "event {} must be a top-level message",
            m.full_name()
        );
        let o = opts.get_extension(&event_ext);
        let subject = o
            .as_message()
            .and_then(|o| msg_field(o, "subject"))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        assert!(
            !subject.is_empty(),
            "event {} has no subject",
            m.full_name()
        );
        let body = subject_expr(&m, &subject);
        let _ = writeln!(
            events,
            "impl crate::Event for {} {{\n    fn subject(&self) -> String {{\n        {body}\n    }}\n}}",
            rust_path(&m)
        );
    }
    std::fs::write(out.join("events.rs"), events).expect("write events.rs");
}

/// The Rust expression giving event `m`'s subject: `subject` itself, or a `format!` of it
/// when it has `{field}` placeholders (each naming a string field of the message).
fn subject_expr(m: &prost_reflect::MessageDescriptor, subject: &str) -> String {
    let (mut template, mut args, mut rest) = (String::new(), Vec::new(), subject);
    while let Some(a) = rest.find('{') {
        let b = rest[a..]
            .find('}')
            .map(|b| a + b)
            .unwrap_or_else(|| panic!("event {}: malformed subject {subject:?}", m.full_name()));
        let field = &rest[a + 1..b];
        let f = m
            .get_field_by_name(field)
            .unwrap_or_else(|| panic!("event {}: no field {field} for its subject", m.full_name()));
        assert!(
            matches!(f.kind(), prost_reflect::Kind::String) && !f.is_list(),
            "event {}: subject field {field} must be a string",
            m.full_name()
        );
        template.push_str(&rest[..a]);
        template.push_str("{}");
        args.push(format!("self.{field}"));
        rest = &rest[b + 1..];
    }
    assert!(
        !rest.contains('}'),
        "event {}: malformed subject {subject:?}",
        m.full_name()
    );
    template.push_str(rest);
    if args.is_empty() {
        format!("{subject:?}.to_string()")
    } else {
        format!("format!({template:?}, {})", args.join(", "))
    }
}

/// Compiles the domains' on-disk records, `internal/<domain>.proto` (package
/// `aicore.<domain>.internal.v1`), into `OUT_DIR/internal/` (module `internal::<domain>`). Apart from the contracts: they
/// stay out of the descriptor set the gateway and the CLI reflect over (no route, no
/// OpenAPI schema), and their `bytes` fields are `Vec<u8>` as the hand-written records'
/// were (one field that was `Bytes`, a state-manager version's data, stays so). A type of a
/// contract they use (`import "quest_system.proto"`) is the contract's generated type.
fn compile_internal(out: &std::path::Path) {
    println!("cargo:rerun-if-changed=internal");
    let mut files: Vec<String> = std::fs::read_dir("internal")
        .expect("read internal/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    // `internal/auth.proto` from the crate's folder, `auth.proto` (a contract) from `proto/`.
    let mut compiler = protox::Compiler::new(["proto", "."]).expect("protox include path");
    // The imported contracts come along so prost knows their messages; only the internal
    // packages' code is kept.
    compiler.include_source_info(true).include_imports(true);
    if let Err(e) = compiler.open_files(&files) {
        panic!("proto compile error: {e:?}");
    }
    let mut config = prost_build::Config::new();
    let mut requests = Vec::new();
    let mut internal = Vec::new();
    for file in compiler.file_descriptor_set().file {
        let pkg = file.package().to_string();
        if files.iter().any(|f| f == file.name()) {
            assert!(
                pkg.starts_with("aicore.") && pkg.ends_with(".internal.v1"),
                "{} must declare package aicore.<domain>.internal.v1",
                file.name()
            );
            internal.push(pkg.clone());
        } else if pkg.starts_with("aicore.") {
            config.extern_path(
                format!(".{pkg}"),
                format!("crate::{}", pkg.replace('.', "::")),
            );
        }
        requests.push((prost_build::Module::from_protobuf_package_name(&pkg), file));
    }
    config.bytes([".aicore.state_manager.internal.v1.VersionRecord.data"]);
    let modules = config.generate(requests).expect("prost-build (internal)");
    let dir = out.join("internal");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/internal");
    // `aicore.auth.internal.v1` becomes `aicore_proto::internal::auth`.
    let mut include = String::new();
    for pkg in &internal {
        let module = prost_build::Module::from_protobuf_package_name(pkg);
        let code = modules.get(&module).expect("generated internal package");
        let name = format!("{pkg}.rs");
        std::fs::write(dir.join(&name), code).expect("write internal package");
        let domain = pkg.split('.').nth(1).expect("aicore.<domain>.internal.v1");
        let _ = writeln!(
            include,
            "pub mod {domain} {{\n    include!(concat!(env!(\"OUT_DIR\"), \"/internal/{name}\"));\n}}"
        );
    }
    std::fs::write(dir.join("_includes.rs"), include).expect("write internal includes");
}

/// The field number of `message`'s idempotency key: a singular string field named
/// `idempotency_key` (0 when there is none). Found by name, so every write that has one
/// is covered without marking it.
fn idempotency_key_field(message: &prost_reflect::MessageDescriptor) -> u32 {
    message
        .get_field_by_name("idempotency_key")
        .filter(|f| matches!(f.kind(), prost_reflect::Kind::String) && !f.is_list())
        .map_or(0, |f| f.number())
}

fn msg_field(m: &DynamicMessage, name: &str) -> Option<Value> {
    m.get_field_by_name(name).map(|c| c.into_owned())
}

struct ServiceGen {
    policies: HashMap<String, Policy>,
    descriptions: HashMap<String, String>,
}

fn doc(buf: &mut String, indent: &str, lines: &[String]) {
    for l in lines {
        let _ = writeln!(buf, "{indent}///{}", l.trim_end());
    }
}

/// What the writers of one service's generated code share.
struct Svc<'a> {
    svc: &'a prost_build::Service,
    /// `aicore.<domain>.v1.<Service>`.
    full: String,
    /// The Rust name of the service.
    name: &'a str,
}

impl prost_build::ServiceGenerator for ServiceGen {
    fn generate(&mut self, svc: prost_build::Service, buf: &mut String) {
        let s = Svc {
            full: format!("{}.{}", svc.package, svc.proto_name),
            name: &svc.name,
            svc: &svc,
        };
        self.write_table(&s, buf);
        write_handler_trait(&s, buf);
        write_server(&s, buf);
        write_client(&s, buf);
    }
}

impl ServiceGen {
    /// The RPC table (`METHODS`) and the service (`SERVICE`).
    fn write_table(&self, s: &Svc, buf: &mut String) {
        let (svc, full) = (s.svc, &s.full);
        let domain = svc
            .package
            .strip_prefix("aicore.")
            .and_then(|p| p.strip_suffix(".v1"))
            .expect("package aicore.<domain>.v1")
            .to_string();
        let description = self.descriptions.get(full).cloned().unwrap_or_default();
        let _ = writeln!(
            buf,
            "/// The RPCs of `{full}`, in declaration order; indexes match the handler dispatch."
        );
        let _ = writeln!(buf, "pub static METHODS: &[crate::MethodInfo] = &[");
        for m in &svc.methods {
            let rpc = m.name.trim_start_matches("r#");
            let p = self
                .policies
                .get(&format!("{full}.{}", m.proto_name))
                .cloned()
                .unwrap_or_default();
            let access = match p.access {
                1 => "Public",
                2 => "Authenticated",
                3 => "Roles",
                _ => unreachable!(),
            };
            let roles: Vec<String> = p.roles.iter().map(|r| format!("{r:?}")).collect();
            let _ = writeln!(
                buf,
                "    crate::MethodInfo {{ domain: {domain:?}, service: {full:?}, name: {:?}, rpc: {rpc:?}, subject: \"svc.{domain}.v1.{rpc}\", input: {:?}, output: {:?}, server_streaming: {}, idempotency_key: {}, policy: crate::Policy {{ access: crate::Access::{access}, roles: &[{}], read_only: {}, default_deadline_ms: {} }} }},",
                m.proto_name,
                m.input_proto_type.trim_start_matches('.'),
                m.output_proto_type.trim_start_matches('.'),
                m.server_streaming,
                p.idempotency_key,
                roles.join(", "),
                p.read_only,
                p.default_deadline_ms,
            );
        }
        let _ = writeln!(buf, "];");
        let _ = writeln!(buf, "/// The `{full}` service: its domain, name and RPCs.");
        let _ = writeln!(
            buf,
            "pub static SERVICE: crate::ServiceInfo = crate::ServiceInfo {{ domain: {domain:?}, name: {:?}, full_name: {full:?}, description: {description:?}, methods: METHODS }};",
            svc.proto_name
        );
    }
}

/// The handler trait a domain implements.
fn write_handler_trait(s: &Svc, buf: &mut String) {
    let (svc, full, name) = (s.svc, &s.full, s.name);
    doc(buf, "", &svc.comments.leading);
    let _ = writeln!(buf, "///");
    let _ = writeln!(
        buf,
        "/// Implemented by the domain that serves `{full}`; wrap it in [`{name}Server`] to serve it."
    );
    let _ = writeln!(buf, "pub trait {name}Handler: Send + Sync + 'static {{");
    for m in &svc.methods {
        doc(buf, "    ", &m.comments.leading);
        let out = if m.server_streaming {
            format!("crate::Streaming<{}>", m.output_type)
        } else {
            m.output_type.clone()
        };
        let _ = writeln!(
            buf,
            "    fn {}(&self, request: crate::Request<{}>) -> impl ::core::future::Future<Output = Result<{out}, crate::Status>> + Send;",
            m.name, m.input_type
        );
    }
    let _ = writeln!(buf, "}}");
}

/// The server wrapper: decoding, dispatch by RPC index, encoding.
fn write_server(s: &Svc, buf: &mut String) {
    let (svc, full, name) = (s.svc, &s.full, s.name);
    let _ = writeln!(
        buf,
        "/// Serves a [`{name}Handler`]: decodes requests, dispatches by RPC, encodes replies."
    );
    let _ = writeln!(buf, "pub struct {name}Server<T>(pub ::std::sync::Arc<T>);");
    let _ = writeln!(
        buf,
        "impl<T: {name}Handler> crate::Dispatch for {name}Server<T> {{"
    );
    let _ = writeln!(
        buf,
        "    fn service(&self) -> &'static crate::ServiceInfo {{ &SERVICE }}"
    );
    let _ = writeln!(
        buf,
        "    fn call(&self, method: usize, request: crate::Request<::bytes::Bytes>) -> ::futures::future::BoxFuture<'static, Result<crate::Reply, crate::Status>> {{"
    );
    let _ = writeln!(buf, "        let handler = self.0.clone();");
    let _ = writeln!(buf, "        match method {{");
    for (i, m) in svc.methods.iter().enumerate() {
        let body = if m.server_streaming {
            "crate::Reply::stream(handler.".to_string()
                + &m.name
                + "(request.decode::<"
                + &m.input_type
                + ">()?).await?)"
        } else {
            "crate::Reply::unary(&handler.".to_string()
                + &m.name
                + "(request.decode::<"
                + &m.input_type
                + ">()?).await?)"
        };
        let _ = writeln!(
            buf,
            "            {i} => Box::pin(async move {{ Ok({body}) }}),"
        );
    }
    let _ = writeln!(
        buf,
        "            _ => Box::pin(async move {{ Err(crate::Status::not_found(format!(\"no rpc #{{method}} in {full}\"))) }}),"
    );
    let _ = writeln!(buf, "        }}\n    }}\n}}");
}

/// The typed client.
fn write_client(s: &Svc, buf: &mut String) {
    let (svc, full, name) = (s.svc, &s.full, s.name);
    let _ = writeln!(
        buf,
        "/// Typed client of `{full}` over any [`crate::Transport`] (the SDK's NATS client)."
    );
    let _ = writeln!(buf, "#[derive(Clone)]");
    let _ = writeln!(buf, "pub struct {name}Client<T> {{ transport: T }}");
    let _ = writeln!(buf, "impl<T: crate::Transport> {name}Client<T> {{");
    let _ = writeln!(
        buf,
        "    /// A client sending over `transport`.\n    pub fn new(transport: T) -> Self {{ Self {{ transport }} }}"
    );
    for (i, m) in svc.methods.iter().enumerate() {
        doc(buf, "    ", &m.comments.leading);
        let fname = m.name.trim_start_matches("r#");
        if m.server_streaming {
            let _ = writeln!(
                buf,
                "    pub async fn {fname}(&self, request: {}, options: &crate::CallOptions) -> Result<crate::Streaming<{}>, crate::Status> {{ crate::client_stream(&self.transport, &METHODS[{i}], &request, options).await }}",
                m.input_type, m.output_type
            );
        } else {
            let _ = writeln!(
                buf,
                "    pub async fn {fname}(&self, request: {}, options: &crate::CallOptions) -> Result<{}, crate::Status> {{ crate::client_unary(&self.transport, &METHODS[{i}], &request, options).await }}",
                m.input_type, m.output_type
            );
        }
    }
    let _ = writeln!(buf, "}}");
}

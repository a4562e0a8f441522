//! calinet-policy benchmarks (run as root; the apply benchmarks use a lab netns):
//!
//! 1. compile 1,000 policies over 5,000 local endpoints (IPv4, as
//!    calinet-agent compiles a cluster whose pool and endpoints are IPv4);
//! 2. apply the full result through the netlink batch vs `nft -f` of the
//!    equivalent script (same namespace, same ruleset, same run), then the same
//!    for the ruleset with IPv6 rules too (the library's default options);
//! 3. add one endpoint to the loaded ruleset: compile + diff time, netlink apply
//!    time and message count, vs `nft -f` of the equivalent diff script.
//!
//! `cargo bench -p calinet-policy --bench policy`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use calinet_policy::compile::{Incremental, Options, Pool, compile};
use calinet_policy::ir::Ruleset;
use calinet_policy::model::{AnyResource, Profile, parse_yaml};
use calinet_policy::netlink::{
    NetlinkBackend, NetlinkSocket, diff_transaction, full_transaction, full_transaction_in,
};
use calinet_policy::nft::{NftCli, render_diff, render_full};
use calinet_policy::semantics::{Endpoint, Endpoints, NamedPort, PolicyModel};

const POLICIES: usize = 1000;
const ENDPOINTS: usize = 5000;
const APPS: usize = 500;
const NAMESPACES: usize = 50;

fn policies_yaml() -> String {
    let mut y = String::new();
    for i in 0..POLICIES {
        let app = i % APPS;
        let ns = app % NAMESPACES;
        y.push_str(&format!(
            r#"---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: p{i}, namespace: ns{ns}}}
spec:
  selector: app == 'app{app}'
  order: {order}
  types: [Ingress, Egress]
  ingress:
  - action: Allow
    protocol: TCP
    source: {{selector: app == 'app{src}'}}
    destination: {{ports: [80, 443, "8000:8100"]}}
  - action: Allow
    protocol: TCP
    source: {{nets: [198.51.{n}.0/24]}}
    destination: {{ports: [http]}}
  - action: Deny
    protocol: UDP
    destination: {{ports: [53]}}
  egress:
  - action: Allow
    destination: {{namespaceSelector: team == 't{team}'}}
"#,
            order = i % 10,
            src = (app + 1) % APPS,
            n = i % 250,
            team = i % 7,
        ));
    }
    y
}

fn endpoint(i: usize) -> Endpoint {
    let app = i % APPS;
    let ns = app % NAMESPACES;
    Endpoint {
        name: format!("ns{ns}/pod{i}"),
        namespace: Some(format!("ns{ns}")),
        local: true,
        interface: format!("cali{i:011x}"),
        addrs: vec![
            format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
                .parse()
                .unwrap(),
        ],
        labels: [("app".to_string(), format!("app{app}"))]
            .into_iter()
            .collect(),
        profiles: vec![format!("kns.ns{ns}")],
        named_ports: vec![NamedPort {
            name: "http".into(),
            protocol: calinet_policy::model::Protocol::TCP,
            port: 8080,
        }],
    }
}

fn model() -> PolicyModel {
    let mut res = parse_yaml(&policies_yaml()).unwrap();
    for ns in 0..NAMESPACES {
        let labels: BTreeMap<String, String> = [("team".to_string(), format!("t{}", ns % 7))]
            .into_iter()
            .collect();
        res.push(AnyResource::Profile(Profile::for_namespace(
            &format!("ns{ns}"),
            &labels,
        )));
    }
    PolicyModel::build(&res).unwrap()
}

fn pools() -> Vec<Pool> {
    vec![Pool {
        cidr: "10.0.0.0/8".parse().unwrap(),
        nat_outgoing: true,
    }]
}

/// Options as calinet-agent compiles this cluster: its only pool is IPv4 and
/// so are its endpoints, so no IPv6 rules (Felix's `ipv6Support` off).
fn agent_options() -> Options {
    Options {
        ipv6: false,
        ..Options::default()
    }
}

fn build(m: &PolicyModel, n: usize, opts: &Options) -> Ruleset {
    let eps = Endpoints::new(m, (0..n).map(endpoint));
    compile(m, &eps, &pools(), opts).unwrap()
}

/// CPU time (user + system) of this thread or of waited-for children; the
/// machine is shared and loaded, so CPU time is the steadier comparison.
fn cpu(who: i32) -> Duration {
    let (user, sys) = cpu_split(who);
    user + sys
}

/// User and system (kernel) CPU time, as [`cpu`].
fn cpu_split(who: i32) -> (Duration, Duration) {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Full apply of `rs`: the netlink batch against `nft -f` of the same ruleset
/// as text, alternating, in the same namespace.
/// `CALINET_POLICY_BENCH_SCRIPT=<file>` writes the script to `<file>.<tag>`.
fn full_apply(what: &str, tag: &str, rs: &Ruleset, sock: &NetlinkSocket, nft: &NftCli) {
    let script = render_full(rs);
    if let Some(path) = std::env::var_os("CALINET_POLICY_BENCH_SCRIPT") {
        let mut path = path;
        path.push(format!(".{tag}"));
        std::fs::write(path, &script).unwrap();
    }
    let mut t_nl = Vec::new();
    let mut t_nft = Vec::new();
    let mut c_nl = Vec::new();
    let mut c_nft = Vec::new();
    let (mut b_nl, mut s_nl, mut cs_nl) = (Vec::new(), Vec::new(), Vec::new());
    let mut messages = 0;
    // Each transaction is encoded into the previous one's buffer, as
    // NetlinkBackend does (the first starts from an empty one).
    let mut buf = Vec::new();
    for _ in 0..5 {
        let (start, c0) = (Instant::now(), cpu(libc::RUSAGE_THREAD));
        let tx = full_transaction_in(rs, buf).unwrap();
        let (built, c_built) = (start.elapsed(), cpu(libc::RUSAGE_THREAD) - c0);
        sock.send(&tx).unwrap();
        t_nl.push(start.elapsed());
        let c_all = cpu(libc::RUSAGE_THREAD) - c0;
        c_nl.push(c_all);
        b_nl.push(c_built);
        s_nl.push(start.elapsed() - built);
        cs_nl.push(c_all - c_built);
        println!(
            "  netlink: build {} ({} CPU) + send/ack {} ({} CPU, nearly all in the kernel)",
            ms(built),
            ms(c_built),
            ms(start.elapsed() - built),
            ms(c_all - c_built)
        );
        messages = tx.messages;
        buf = tx.into_buffer();
        let (start, (u0, s0)) = (Instant::now(), cpu_split(libc::RUSAGE_CHILDREN));
        nft.apply(&script).unwrap();
        t_nft.push(start.elapsed());
        let (u1, s1) = cpu_split(libc::RUSAGE_CHILDREN);
        c_nft.push((u1 - u0) + (s1 - s0));
        // The kernel part of `ip netns exec nft -f` also holds process start-up
        // (exec, page faults), so its system time bounds the kernel's batch work
        // from above.
        println!(
            "  nft -f: {} wall, {} user + {} system CPU",
            ms(start.elapsed()),
            ms(u1 - u0),
            ms(s1 - s0)
        );
    }
    let (nl, nf) = (median(t_nl), median(t_nft));
    let (cnl, cnf) = (median(c_nl), median(c_nft));
    println!(
        "full apply ({what}): netlink median {} wall / {} CPU ({messages} messages), nft -f median {} wall / {} CPU ({} script lines); nft/netlink = {:.2}x wall, {:.2}x CPU",
        ms(nl),
        ms(cnl),
        ms(nf),
        ms(cnf),
        script.lines().count(),
        nf.as_secs_f64() / nl.as_secs_f64(),
        cnf.as_secs_f64() / cnl.as_secs_f64()
    );
    // The kernel's work on the batch is the same for both tools (same objects;
    // `nft`'s own batch sendmsg takes as long under strace): the ratio against
    // the send alone is the ceiling a free batch build would reach.
    let (snl, csnl) = (median(s_nl), median(cs_nl));
    println!(
        "  netlink split: build median {} CPU, send/ack median {} wall / {} CPU; nft/(netlink send alone) = {:.2}x wall, {:.2}x CPU",
        ms(median(b_nl)),
        ms(snl),
        ms(csnl),
        nf.as_secs_f64() / snl.as_secs_f64(),
        cnf.as_secs_f64() / csnl.as_secs_f64()
    );
}

fn main() {
    // 1. Compile.
    let mut t = Vec::new();
    let mut rs = Ruleset::default();
    for _ in 0..3 {
        let start = Instant::now();
        let m = model();
        rs = build(&m, ENDPOINTS, &agent_options());
        t.push(start.elapsed());
    }
    let sets: usize = rs.sets.values().map(|s| s.len()).sum();
    {
        let start = Instant::now();
        let y = policies_yaml();
        let res = parse_yaml(&y).unwrap();
        let t_parse = start.elapsed();
        let start = Instant::now();
        let m = PolicyModel::build(&res).unwrap();
        let t_model = start.elapsed();
        let start = Instant::now();
        let eps = Endpoints::new(&m, (0..ENDPOINTS).map(endpoint));
        let t_eps = start.elapsed();
        let start = Instant::now();
        let _ = compile(&m, &eps, &pools(), &agent_options()).unwrap();
        println!(
            "  phases: YAML parse {}, model build {}, endpoint labels {}, compile {}",
            ms(t_parse),
            ms(t_model),
            ms(t_eps),
            ms(start.elapsed())
        );
    }
    println!(
        "compile {POLICIES} policies x {ENDPOINTS} endpoints (parse YAML + build model + compile): median {} ({} chains, {} rules, {} sets, {} set elements)",
        ms(median(t)),
        rs.chains.len(),
        rs.rule_count(),
        rs.sets.len(),
        sets
    );

    if !testlab::skip::is_root() {
        println!("SKIPPED: apply benchmarks need root (network namespaces)");
        return;
    }
    let lab = testlab::Lab::new("policy_bench").unwrap();
    let ns = lab.netns("bench").unwrap();
    let nft = NftCli {
        netns: Some(ns.name().to_owned()),
    };
    let sock = NetlinkSocket::open_in(&ns.path()).unwrap();

    // 2. Full apply: netlink vs nft -f, alternating, same namespace; the
    // ruleset calinet-agent installs for this cluster, then the same policies
    // with IPv6 rules too (the library's default).
    full_apply(
        "IPv4 rules, as calinet-agent compiles this IPv4 cluster",
        "ipv4",
        &rs,
        &sock,
        &nft,
    );
    let dual = build(&model(), ENDPOINTS, &Options::default());
    println!(
        "  with IPv6 rules too: {} chains, {} rules, {} sets",
        dual.chains.len(),
        dual.rule_count(),
        dual.sets.len()
    );
    full_apply("IPv4 and IPv6 rules", "dual", &dual, &sock, &nft);
    sock.send(&full_transaction(&rs).unwrap()).unwrap();

    // 3. One more endpoint, like existing ones (same labels as pod 0).
    let m = model();
    let mut inc = Incremental::new(
        m.clone(),
        (0..ENDPOINTS).map(endpoint),
        pools(),
        agent_options(),
    )
    .unwrap();
    let mut t_full = Vec::new();
    let mut t_inc = Vec::new();
    let mut t_diff = Vec::new();
    let mut t_send = Vec::new();
    let mut t_nft_diff = Vec::new();
    let mut msgs = 0;
    let mut touched = false;
    for round in 0..5 {
        sock.send(&full_transaction(&rs).unwrap()).unwrap();
        let mut extra = endpoint(0);
        extra.name = format!("ns0/extra{round}");
        extra.interface = format!("caliextra{round}");
        extra.addrs = vec!["10.200.0.1".parse().unwrap()];
        // Full recompile, for comparison.
        let start = Instant::now();
        let eps = Endpoints::new(&m, (0..ENDPOINTS).map(endpoint).chain([extra.clone()]));
        let full = compile(&m, &eps, &pools(), &agent_options()).unwrap();
        t_full.push(start.elapsed());
        // Incremental: one endpoint against the existing sets and policies.
        let start = Instant::now();
        inc.upsert_endpoint(extra.clone()).unwrap();
        t_inc.push(start.elapsed());
        assert_eq!(inc.ruleset(), &full, "incremental equals full compile");
        let start = Instant::now();
        let d = rs.diff(inc.ruleset());
        t_diff.push(start.elapsed());
        let start = Instant::now();
        let tx = diff_transaction(&rs.table, &d).unwrap();
        sock.send(&tx).unwrap();
        t_send.push(start.elapsed());
        msgs = tx.messages;
        touched = d.touches_rules();
        // Anchor: the same change as an nft script, from the same starting state.
        sock.send(&full_transaction(&rs).unwrap()).unwrap();
        let diff_script = render_diff(&rs.table, &d);
        let start = Instant::now();
        nft.apply(&diff_script).unwrap();
        t_nft_diff.push(start.elapsed());
        inc.remove_endpoint(&extra.name);
    }
    println!(
        "add one endpoint: incremental compile median {} (full recompile {}), diff {}, netlink transaction build + send median {} ({msgs} messages, rules touched: {touched}); nft -f of the same diff median {}",
        ms(median(t_inc)),
        ms(median(t_full)),
        ms(median(t_diff)),
        ms(median(t_send)),
        ms(median(t_nft_diff)),
    );
    // The stateful backend (diff against what it installed, then send) end to end.
    let mut backend = NetlinkBackend::new(NetlinkSocket::open_in(&ns.path()).unwrap());
    backend.apply(&rs).unwrap();
    let next = build(&m, ENDPOINTS + 1, &agent_options());
    let start = Instant::now();
    let st = backend.apply(&next).unwrap();
    println!(
        "  NetlinkBackend::apply of that update (diff + send + bookkeeping): {} ({} messages)",
        ms(start.elapsed()),
        st.messages
    );
}

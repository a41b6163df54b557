//! The floor under keygate's performance: Pingora 0.9.1 with the same build settings, allocator
//! and thread count, forwarding every request to one upstream and doing nothing else (no key,
//! no body read, no limits, no accounting, no metrics). `benches/e2e.sh` measures it beside
//! keygate and nginx, so that what keygate itself costs is told apart from what its framework
//! costs.
//!
//! usage: pingora_baseline LISTEN UPSTREAM     e.g. 127.0.0.1:18110 127.0.0.1:18080

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct PassThrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora_baseline LISTEN UPSTREAM");
        std::process::exit(2);
    };
    // As keygate does by default: one worker thread per CPU this process may run on, stealing
    // work only when there are several.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let conf = ServerConf {
        threads,
        work_stealing: threads > 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, PassThrough { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}

//! The agent's small local TCP listeners (monit's alert mails, rsyslog's SSH events) share one shape:
//! blocking, a thread per connection, a cap on connections so a stuck or hostile local client costs a
//! bounded number of threads, and a shutdown that closes open connections. This module is that shape
//! once; each listener brings only its connection handler.

use crate::sync::lock;
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Serves one connection; the flag turns true when the service is shutting down.
pub type Handler = dyn Fn(TcpStream, &AtomicBool) + Send + Sync;

struct Core {
    name: &'static str,
    max_connections: usize,
    refusal: &'static [u8],
    handler: Box<Handler>,
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Open connections, so `shutdown` can close them.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

impl Core {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        lock(&self.conns)
    }
}

/// A running listener; stops on [`shutdown`](Self::shutdown) or drop.
pub struct TcpService {
    addr: SocketAddr,
    core: Arc<Core>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl TcpService {
    /// Listens on `listen` and runs `handler` for each connection on its own thread (named after
    /// `name`); beyond `max_connections` a connection is sent `refusal` (may be empty) and closed.
    pub fn start(
        name: &'static str,
        listen: &str,
        max_connections: usize,
        refusal: &'static [u8],
        handler: Box<Handler>,
    ) -> io::Result<TcpService> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let core = Arc::new(Core {
            name,
            max_connections,
            refusal,
            handler,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let for_thread = Arc::clone(&core);
        let acceptor = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || accept_loop(listener, for_thread))?;
        Ok(TcpService { addr, core, acceptor: Mutex::new(Some(acceptor)) })
    }

    /// The bound address (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes open connections and waits (at most 2 s) for them to end. Idempotent.
    pub fn shutdown(&self) {
        if self.core.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept; it sees `stopping` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let handle = lock(&self.acceptor).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        for conn in self.core.conns().values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.core.conns().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, core: Arc<Core>) {
    for stream in listener.incoming() {
        if core.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                log::warn!("{}: accept failed: {e}", core.name);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let id = core.next_id.fetch_add(1, Ordering::Relaxed);
        let registered = stream.try_clone().ok().and_then(|clone| {
            let mut conns = core.conns();
            (conns.len() < core.max_connections).then(|| conns.insert(id, clone)).map(|_| ())
        });
        if registered.is_none() {
            log::warn!("{}: too many connections, refusing one", core.name);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(core.refusal);
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let for_conn = Arc::clone(&core);
        let spawned = std::thread::Builder::new().name(format!("{}-conn", core.name)).spawn(move || {
            (for_conn.handler)(stream, &for_conn.stopping);
            for_conn.conns().remove(&id);
        });
        if spawned.is_err() {
            core.conns().remove(&id);
        }
    }
}

//! The accept loop the tests' small HTTP servers share (the blob server, the metadata service): one
//! thread per connection on `127.0.0.1:<free port>`, until the listener is dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A listening socket whose connections are handed, each on its own thread, to one handler.
pub struct HttpListener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl HttpListener {
    /// Binds a free loopback port and serves every connection with `handle`.
    pub fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> HttpListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test HTTP server");
        let addr = listener.local_addr().expect("test HTTP server address");
        let stop = Arc::new(AtomicBool::new(false));
        let (handle, stopped) = (Arc::new(handle), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let handle = handle.clone();
                    std::thread::spawn(move || handle(conn));
                }
            }
        });
        HttpListener { addr, stop }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

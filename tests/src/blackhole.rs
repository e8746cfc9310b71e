//! Unreachable services for discovery tests, all on 127.0.0.1: a port that
//! refuses connections, a listener that accepts TCP and never answers, and a
//! listener that never accepts (the kernel completes the handshake and the
//! connection waits in the backlog forever).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A loopback port with nothing listening (connections are refused).
pub fn refused_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let address = listener.local_addr().expect("address");
    drop(listener);
    address
}

/// A listener that never calls accept.
pub struct NeverAccepts {
    pub address: SocketAddr,
    _listener: TcpListener,
}

impl NeverAccepts {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        Self {
            address: listener.local_addr().expect("address"),
            _listener: listener,
        }
    }
}

/// A listener that accepts connections, reads nothing, answers nothing and
/// keeps them open until dropped.
pub struct AcceptsSilently {
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<std::net::TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AcceptsSilently {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (stop2, held2) = (stop.clone(), held.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    if let Ok(mut all) = held2.lock() {
                        all.push(stream);
                    }
                }
            }
        });
        Self {
            address,
            stop,
            held,
            thread: Some(thread),
        }
    }
}

impl Drop for AcceptsSilently {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Ok(mut all) = self.held.lock() {
            all.clear();
        }
    }
}

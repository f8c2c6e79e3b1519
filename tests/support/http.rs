//! A tiny static file server on 127.0.0.1 for tests and benchmarks: serves one directory,
//! counts requests per path. Real HTTP over a real socket; one thread per connection.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct FileServer {
    pub url: String,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl FileServer {
    pub fn start(root: impl Into<PathBuf>) -> FileServer {
        let root = root.into();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let hits = Arc::new(Mutex::new(BTreeMap::new()));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let root = root.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                    let mut request = String::new();
                    if reader.read_line(&mut request).is_err() {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                        line.clear();
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                    *counter.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let mut file = root.join(path.trim_start_matches('/'));
                    // A directory is its index page (a PEP 503 simple index, as pip reads it).
                    if file.is_dir() {
                        file = file.join("index.html");
                    }
                    let html = file.extension().is_some_and(|e| e == "html");
                    let kind = if html {
                        "Content-Type: text/html\r\n"
                    } else {
                        ""
                    };
                    let mut out = stream;
                    match std::fs::read(&file) {
                        Ok(body) if !path.contains("..") => {
                            let _ = write!(
                                out,
                                "HTTP/1.1 200 OK\r\n{kind}Content-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = out.write_all(&body);
                        }
                        _ => {
                            let _ = write!(
                                out,
                                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            );
                        }
                    }
                });
            }
        });
        FileServer { url, hits }
    }

    /// How many requests asked for `path`.
    #[allow(dead_code)]
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

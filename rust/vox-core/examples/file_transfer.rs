//! A file store over vox: uploads and downloads stream in chunks over
//! channels, with credit flow control, over TCP loopback.
//!
//! Run with `cargo run -p vox-core --example file_transfer`. The client
//! opens a virtual connection to the `FileStore` service, uploads two files
//! at once, lists the store, downloads a file back and checks its BLAKE3
//! digest, and shows the service's own errors: a missing file, a duplicate
//! name, and an upload that is too large (the server stops reading and the
//! client's channel reports the reset). It then shuts down cleanly.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;
use vox_core::driver::{ChannelError, Rx, Tx, channel};
use vox_core::service::{OpenClient, ServiceError, ServiceRouter};
use vox_core::session::SessionBuilder;
use vox_core::wire::ConnectionSettings;

/// The largest file the store accepts.
const MAX_FILE_SIZE: u64 = 8 << 20;

/// A stored file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, vox_core::Schema)]
pub struct FileInfo {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// BLAKE3 of its content, in hex.
    pub digest: String,
}

/// What the store can refuse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, vox_core::Schema)]
pub enum TransferError {
    /// No file by that name.
    #[error("no file named {0:?}")]
    NotFound(String),
    /// A file by that name exists already.
    #[error("a file named {0:?} exists already")]
    AlreadyExists(String),
    /// The upload went over the size limit.
    #[error("file is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The upload's channel failed before the sender closed it.
    #[error("upload interrupted: {0}")]
    Interrupted(String),
    /// The chunk size asked for is zero.
    #[error("chunk size must be positive")]
    BadChunkSize,
}

/// An in-memory file store.
#[vox_core::service]
pub trait FileStore {
    /// Stores the chunks streamed on `chunks` as `name`, once the sender
    /// closes the channel.
    async fn upload(&self, name: String, chunks: Rx<Bytes>) -> Result<FileInfo, TransferError>;
    /// Streams file `name` back in chunks of `chunk_size` bytes.
    async fn download(&self, name: String, chunk_size: u32, chunks: Tx<Bytes>) -> Result<FileInfo, TransferError>;
    /// Lists the stored files.
    #[vox(idem)]
    async fn list(&self) -> Vec<FileInfo>;
    /// Deletes a file.
    #[vox(idem)]
    async fn delete(&self, name: String) -> Result<(), TransferError>;
}

#[derive(Default)]
struct Store {
    files: Mutex<BTreeMap<String, Bytes>>,
}

fn info(name: &str, content: &[u8]) -> FileInfo {
    FileInfo { name: name.to_string(), size: content.len() as u64, digest: blake3::hash(content).to_hex().to_string() }
}

impl FileStore for Store {
    async fn upload(&self, name: String, mut chunks: Rx<Bytes>) -> Result<FileInfo, TransferError> {
        if self.files.lock().expect("store lock").contains_key(&name) {
            return Err(TransferError::AlreadyExists(name));
        }
        let mut content = Vec::new();
        loop {
            match chunks.recv().await {
                Ok(Some(chunk)) => {
                    if (content.len() + chunk.len()) as u64 > MAX_FILE_SIZE {
                        // Returning drops `chunks`, which resets the channel:
                        // the uploader's next send reports it.
                        return Err(TransferError::TooLarge { limit: MAX_FILE_SIZE });
                    }
                    content.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(TransferError::Interrupted(e.to_string())),
            }
        }
        let stored = info(&name, &content);
        let mut files = self.files.lock().expect("store lock");
        if files.contains_key(&name) {
            return Err(TransferError::AlreadyExists(name));
        }
        files.insert(name, Bytes::from(content));
        Ok(stored)
    }

    async fn download(&self, name: String, chunk_size: u32, mut chunks: Tx<Bytes>) -> Result<FileInfo, TransferError> {
        if chunk_size == 0 {
            return Err(TransferError::BadChunkSize);
        }
        let content = self.files.lock().expect("store lock").get(&name).cloned();
        let content = content.ok_or(TransferError::NotFound(name.clone()))?;
        let mut offset = 0;
        while offset < content.len() {
            let end = (offset + chunk_size as usize).min(content.len());
            chunks.send(&content.slice(offset..end)).await.map_err(|e| TransferError::Interrupted(e.to_string()))?;
            offset = end;
        }
        chunks.close().await.map_err(|e| TransferError::Interrupted(e.to_string()))?;
        Ok(info(&name, &content))
    }

    async fn list(&self) -> Vec<FileInfo> {
        self.files.lock().expect("store lock").iter().map(|(name, content)| info(name, content)).collect()
    }

    async fn delete(&self, name: String) -> Result<(), TransferError> {
        match self.files.lock().expect("store lock").remove(&name) {
            Some(_) => Ok(()),
            None => Err(TransferError::NotFound(name)),
        }
    }
}

/// Deterministic test content (xorshift).
fn make_file(size: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    Bytes::from(out)
}

/// Uploads `content` in `chunk`-byte pieces; returns the server's answer and
/// how the sending side ended.
async fn upload(
    store: &FileStoreClient,
    name: &str,
    content: Bytes,
    chunk: usize,
) -> (Result<FileInfo, ServiceError<TransferError>>, Result<(), ChannelError>) {
    let (mut tx, rx) = channel::<Bytes>();
    let feed = async move {
        let mut offset = 0;
        while offset < content.len() {
            let end = (offset + chunk).min(content.len());
            tx.send(&content.slice(offset..end)).await?;
            offset = end;
        }
        tx.close().await
    };
    tokio::join!(store.upload(name.to_string(), rx), feed)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ---- server
    let router = ServiceRouter::new().serve(FileStoreDispatcher::new(Store::default()));
    let listener = SessionBuilder::new().acceptor(router).listen("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("server: file store listening on {addr}");
    let server_task = tokio::spawn(async move {
        let session = listener.accept().await?;
        let reason = session.handle.closed().await;
        println!("server: session ended: {reason}");
        Ok::<_, vox_core::session::SessionError>(())
    });

    // ---- client
    let client = SessionBuilder::new().connect(addr).await?;
    let store = client.handle.open::<FileStoreClient>(ConnectionSettings::default()).await?;
    println!("client: opened connection {} to the FileStore service", store.caller().connection_id());

    // Two uploads at once on the same connection.
    let photo = make_file(3 << 20, 7);
    let notes = make_file(200_000, 11);
    let started = Instant::now();
    let ((photo_up, photo_fed), (notes_up, notes_fed)) = tokio::join!(
        upload(&store, "photo.raw", photo.clone(), 64 * 1024),
        upload(&store, "notes.txt", notes.clone(), 4096),
    );
    photo_fed?;
    notes_fed?;
    let (photo_up, notes_up) = (photo_up?, notes_up?);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "client: uploaded {} ({:.1} MiB) and {} ({} bytes) concurrently in {:.0} ms ({:.0} MiB/s)",
        photo_up.name,
        mib(photo_up.size),
        notes_up.name,
        notes_up.size,
        secs * 1000.0,
        mib(photo_up.size + notes_up.size) / secs.max(1e-9)
    );

    for f in store.list().await? {
        println!("client: stored {:<10} {:>8} bytes  blake3 {}…", f.name, f.size, &f.digest[..16]);
    }

    // Download one back and check it.
    let (tx, mut rx) = channel::<Bytes>();
    let receive = async move {
        let (mut content, mut chunks) = (Vec::new(), 0);
        while let Some(chunk) = rx.recv().await? {
            content.extend_from_slice(&chunk);
            chunks += 1;
        }
        Ok::<_, ChannelError>((content, chunks))
    };
    let (down, received) = tokio::join!(store.download("photo.raw".into(), 100_000, tx), receive);
    let (down, (content, chunks)) = (down?, received?);
    let ok = blake3::hash(&content).to_hex().to_string() == down.digest && content == photo;
    println!(
        "client: downloaded {} in {chunks} chunks, {} bytes, digest {}",
        down.name,
        content.len(),
        if ok { "matches" } else { "DOES NOT MATCH" }
    );
    if !ok {
        return Err("downloaded content differs from the upload".into());
    }

    // The service's own errors.
    let (tx, _rx) = channel::<Bytes>();
    match store.download("missing.bin".into(), 1024, tx).await {
        Err(ServiceError::User(e)) => println!("client: download missing.bin -> {e}"),
        other => println!("client: download missing.bin -> unexpected {other:?}"),
    }
    match upload(&store, "notes.txt", notes.clone(), 4096).await {
        (Err(ServiceError::User(e)), _) => println!("client: upload notes.txt again -> {e}"),
        (other, _) => println!("client: upload notes.txt again -> unexpected {other:?}"),
    }
    match upload(&store, "huge.iso", make_file(12 << 20, 3), 64 * 1024).await {
        (Err(ServiceError::User(e)), fed) => {
            let fed = match fed {
                Err(e) => format!("the sender saw: {e}"),
                Ok(()) => "the sender had finished".to_string(),
            };
            println!("client: upload huge.iso (12 MiB) -> {e}; {fed}")
        }
        (other, _) => println!("client: upload huge.iso -> unexpected {other:?}"),
    }

    store.delete("notes.txt".into()).await?;
    let left: Vec<String> = store.list().await?.into_iter().map(|f| f.name).collect();
    println!("client: deleted notes.txt; left: {left:?}");

    // Clean shutdown.
    drop(store);
    client.handle.shutdown()?;
    println!("client: session ended: {}", client.handle.closed().await);
    server_task.await??;
    println!("file transfer finished");
    Ok(())
}

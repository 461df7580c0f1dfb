//! The tonic peer (0.14): a gRPC service generated from proto/bench.proto by
//! tonic-prost-build at build time (the `bytes` field is prost's default
//! `Vec<u8>`), over HTTP/2 on TCP (NODELAY on both ends) or on
//! `tokio::io::duplex` (64 KiB) as its memory link. The server stream is an
//! iterator stream (always ready, the fastest form tonic has); the client
//! stream likewise.

use crate::common::{Client, Peer, Result, Transport};
use futures::StreamExt;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Response, Status, Streaming};

/// The generated messages and service.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("bench");
}

use pb::bench_client::BenchClient;
use pb::bench_server::{Bench, BenchServer};
use pb::{Bytes64, Count, Item};

struct Svc;

type ItemStream = Pin<Box<dyn futures::Stream<Item = std::result::Result<Item, Status>> + Send>>;

#[tonic::async_trait]
impl Bench for Svc {
    async fn echo(&self, req: Request<Bytes64>) -> std::result::Result<Response<Bytes64>, Status> {
        Ok(Response::new(req.into_inner()))
    }

    type GenerateStream = ItemStream;

    async fn generate(&self, req: Request<Count>) -> std::result::Result<Response<ItemStream>, Status> {
        let n = req.into_inner().n;
        Ok(Response::new(Box::pin(tokio_stream::iter((0..n).map(|v| Ok(Item { v }))))))
    }

    async fn sum(&self, req: Request<Streaming<Item>>) -> std::result::Result<Response<Count>, Status> {
        let mut items = req.into_inner();
        let mut n = 0;
        while items.message().await?.is_some() {
            n += 1;
        }
        Ok(Response::new(Count { n }))
    }
}

enum Where {
    Tcp(SocketAddr),
    Memory(mpsc::UnboundedSender<tokio::io::DuplexStream>),
}

/// The tonic server.
pub struct Tonic {
    at: Where,
}

/// A tonic client (one HTTP/2 connection; clones share it).
#[derive(Clone)]
pub struct TonicClient(BenchClient<Channel>);

impl Client for TonicClient {
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        Ok(self.0.clone().echo(Bytes64 { data }).await?.into_inner().data)
    }

    async fn stream_down(&self, n: u64) -> Result<u64> {
        let mut items = self.0.clone().generate(Count { n }).await?.into_inner();
        let mut expected = 0;
        while let Some(item) = items.message().await? {
            if item.v != expected {
                return Err("tonic stream: wrong item".into());
            }
            expected += 1;
        }
        Ok(expected)
    }

    async fn stream_up(&self, n: u64) -> Result<u64> {
        Ok(self.0.clone().sum(tokio_stream::iter((0..n).map(|v| Item { v }))).await?.into_inner().n)
    }
}

impl Peer for Tonic {
    type Client = TonicClient;
    const STREAMS: bool = true;

    async fn start(transport: Transport) -> Result<Self> {
        let server = Server::builder().add_service(BenchServer::new(Svc));
        match transport {
            Transport::Tcp => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                let incoming = TcpListenerStream::new(listener).map(|s| {
                    s.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                });
                tokio::spawn(server.serve_with_incoming(incoming));
                Ok(Tonic { at: Where::Tcp(addr) })
            }
            Transport::Memory => {
                let (tx, rx) = mpsc::unbounded_channel();
                let incoming = UnboundedReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
                tokio::spawn(server.serve_with_incoming(incoming));
                Ok(Tonic { at: Where::Memory(tx) })
            }
        }
    }

    async fn connect(&self) -> Result<TonicClient> {
        let channel = match &self.at {
            Where::Tcp(addr) => Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?,
            Where::Memory(server) => {
                let (c, s) = tokio::io::duplex(64 << 10);
                server.send(s).map_err(|_| "tonic: in-memory server gone")?;
                let mut c = Some(c);
                Endpoint::from_static("http://in-memory")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let c = c.take();
                        async move {
                            c.map(hyper_util::rt::TokioIo::new)
                                .ok_or_else(|| std::io::Error::other("in-memory stream already taken"))
                        }
                    }))
                    .await?
            }
        };
        Ok(TonicClient(BenchClient::new(channel)))
    }
}

//! The tarpc peer (0.38): `#[tarpc::service]`, bincode over tarpc's
//! length-delimited serde transport on TCP (NODELAY set on both ends, which
//! tarpc's own `tcp::connect` does not do), and tarpc's in-process channel
//! transport (`transport::channel::unbounded`, no serialization) as its
//! memory link. Every request runs in its own spawned task, as in tarpc's
//! examples. No streams.

use crate::common::{Client, Peer, Result, Transport, no_streams};
use futures::StreamExt;
use std::net::SocketAddr;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tarpc::{client, context};
use tokio::net::{TcpListener, TcpStream};

/// The bench service.
#[tarpc::service]
pub trait Bench {
    /// Answers with its argument.
    async fn echo(data: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct Svc;

impl Bench for Svc {
    async fn echo(self, _: context::Context, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

/// The tarpc server: a TCP address, or nothing for in-process channels.
pub struct Tarpc {
    addr: Option<SocketAddr>,
}

/// A tarpc client.
#[derive(Clone)]
pub struct TarpcClient(BenchClient);

fn framed(s: TcpStream) -> Framed<TcpStream, LengthDelimitedCodec> {
    Framed::new(s, LengthDelimitedCodec::builder().max_frame_length(64 << 20).new_codec())
}

fn serve_channel<T>(transport: T)
where
    T: tarpc::Transport<tarpc::Response<BenchResponse>, tarpc::ClientMessage<BenchRequest>> + Send + 'static,
{
    let channel = BaseChannel::with_defaults(transport);
    tokio::spawn(channel.execute(Svc.serve()).for_each(|response| async move {
        tokio::spawn(response);
    }));
}

impl Client for TarpcClient {
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        Ok(self.0.echo(context::current(), data).await?)
    }

    async fn stream_down(&self, _n: u64) -> Result<u64> {
        Err(no_streams())
    }

    async fn stream_up(&self, _n: u64) -> Result<u64> {
        Err(no_streams())
    }
}

impl Peer for Tarpc {
    type Client = TarpcClient;
    const STREAMS: bool = false;

    async fn start(transport: Transport) -> Result<Self> {
        match transport {
            Transport::Memory => Ok(Tarpc { addr: None }),
            Transport::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                tokio::spawn(async move {
                    while let Ok((s, _)) = listener.accept().await {
                        let _ = s.set_nodelay(true);
                        serve_channel(tarpc::serde_transport::new(framed(s), Bincode::default()));
                    }
                });
                Ok(Tarpc { addr: Some(addr) })
            }
        }
    }

    async fn connect(&self) -> Result<TarpcClient> {
        match self.addr {
            None => {
                let (c, s) = tarpc::transport::channel::unbounded();
                serve_channel(s);
                Ok(TarpcClient(BenchClient::new(client::Config::default(), c).spawn()))
            }
            Some(addr) => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let transport = tarpc::serde_transport::new(framed(s), Bincode::default());
                Ok(TarpcClient(BenchClient::new(client::Config::default(), transport).spawn()))
            }
        }
    }
}

use vox_core::driver::{Rx, Tx};

#[vox_core::service]
pub trait Pipe {
    async fn pipe(&self, ends: (Rx<u8>, Tx<u8>));
}

fn main() {}

use vox_core::driver::Tx;

#[vox_core::service]
pub trait Feed {
    async fn subscribe(&self, topic: String) -> Result<u32, Tx<String>>;
}

fn main() {}

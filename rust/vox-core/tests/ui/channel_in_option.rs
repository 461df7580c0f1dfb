use vox_core::driver::Tx;

#[vox_core::service]
pub trait Logs {
    async fn tail(&self, out: Option<Tx<String>>);
}

fn main() {}

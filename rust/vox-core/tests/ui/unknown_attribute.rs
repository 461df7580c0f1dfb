#[vox_core::service]
pub trait Counter {
    #[vox(idempotent)]
    async fn get(&self) -> u64;
}

fn main() {}

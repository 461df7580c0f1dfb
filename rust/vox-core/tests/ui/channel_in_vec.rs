use vox_core::driver::Rx;

#[vox_core::service]
pub trait Merge {
    async fn merge(&self, inputs: Vec<Rx<u32>>) -> u64;
}

fn main() {}

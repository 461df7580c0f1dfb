use vox_core::driver::Rx;

#[vox_core::service]
pub trait Feed {
    async fn subscribe(&self, topic: String) -> Rx<String>;
}

fn main() {}

// A type used by a service must describe itself (`#[derive(vox_core::Schema)]`,
// rule schema.identity); the error points at the type.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Point {
    x: i32,
}

#[vox_core::service]
pub trait Plot {
    async fn plot(&self, p: Point) -> u32;
}

fn main() {}

// The Schema derive refuses serde attributes whose encoding it would not
// describe.
#[derive(serde::Serialize, serde::Deserialize, vox_core::Schema)]
pub struct Outer {
    #[serde(flatten)]
    inner: Inner,
}

#[derive(serde::Serialize, serde::Deserialize, vox_core::Schema)]
pub struct Inner {
    x: i32,
}

fn main() {}

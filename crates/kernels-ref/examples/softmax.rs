//! One op on the reference backend: upload, softmax, download.
//! `cargo run -p turbine-kernels-ref --example softmax`

use turbine_core::{Backend, HostTensor, Ops};
use turbine_kernels_ref::Cpu;

fn main() -> turbine_core::Result<()> {
    let cpu = Cpu::new();
    // Two rows of three logits, row-major.
    let mut x = cpu.upload(&HostTensor::from_f32([2, 3], &[1.0, 2.0, 3.0, 0.0, 0.0, 0.0])?)?;
    cpu.softmax(&mut x)?;
    let p = cpu.download(&x)?.to_f32()?;
    println!("{p:?}");
    assert!((p[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    Ok(())
}

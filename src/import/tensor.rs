//! TensorProto <-> IR constants. Reads `raw_data` (little-endian) and the typed fields;
//! floats of every width become f32, integers and bools become i64.

use crate::error::{Error, Result};
use crate::ir::{Constant, Shape, TensorData};
use onnx_protobuf::TensorProto;

/// ONNX element types used here.
pub mod dtype {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const UINT16: i32 = 4;
    pub const INT16: i32 = 5;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const UINT32: i32 = 12;
    pub const UINT64: i32 = 13;
    pub const BFLOAT16: i32 = 16;

    pub fn name(t: i32) -> &'static str {
        match t {
            FLOAT => "float",
            UINT8 => "uint8",
            INT8 => "int8",
            UINT16 => "uint16",
            INT16 => "int16",
            INT32 => "int32",
            INT64 => "int64",
            BOOL => "bool",
            FLOAT16 => "float16",
            DOUBLE => "double",
            UINT32 => "uint32",
            UINT64 => "uint64",
            BFLOAT16 => "bfloat16",
            8 => "string",
            _ => "unknown",
        }
    }
}

fn raw_chunks<const N: usize>(raw: &[u8], n: usize, what: &str) -> Result<Vec<[u8; N]>> {
    if raw.len() != n * N {
        return Err(Error::invalid(format!(
            "tensor '{what}' has {} bytes of raw data, its dims need {}",
            raw.len(),
            n * N
        )));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| c.try_into().expect("exact chunk"))
        .collect())
}

/// Decode a TensorProto into a constant.
/// float64 values as f32, which ecc computes in: a value that f32 cannot hold (one that
/// would become infinite, or a non-zero one that would become 0) is refused, not changed.
fn narrow(v: &[f64], name: &str) -> Result<Vec<f32>> {
    let lost = v.iter().find(|&&x| {
        let y = x as f32;
        (x.is_finite() && y.is_infinite()) || (x != 0.0 && y == 0.0)
    });
    if let Some(x) = lost {
        return Err(Error::unsupported(format!(
            "tensor '{name}' holds the float64 value {x:e}, outside float32's range (ecc computes in float32)"
        )));
    }
    Ok(v.iter().map(|&x| x as f32).collect())
}

/// Read a serialized TensorProto file that must hold floats (a model input): integer data
/// is refused with its type named.
pub fn read_pb_float(path: &std::path::Path) -> Result<Constant> {
    use protobuf::Message;
    let bytes = std::fs::read(path)
        .map_err(|e| Error::new(crate::error::ErrorKind::Io(e.to_string())).in_file(path))?;
    let t = TensorProto::parse_from_bytes(&bytes)
        .map_err(|e| Error::new(crate::error::ErrorKind::Parse(e.to_string())).in_file(path))?;
    use dtype::*;
    if !matches!(t.data_type, FLOAT | DOUBLE | FLOAT16 | BFLOAT16) {
        return Err(Error::unsupported(format!(
            "the file holds {} values, the model's input is a float tensor",
            dtype::name(t.data_type)
        ))
        .in_file(path));
    }
    decode(&t).map_err(|e| e.in_file(path))
}

pub fn decode(t: &TensorProto) -> Result<Constant> {
    let name = if t.name.is_empty() {
        "<unnamed>"
    } else {
        t.name.as_str()
    };
    if t.data_location.value() == 1 || !t.external_data.is_empty() {
        return Err(Error::unsupported(format!(
            "tensor '{name}' keeps its data in an external file"
        )));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(Error::invalid(format!(
                "tensor '{name}' has a negative dimension {d}"
            )));
        }
        dims.push(d as usize);
    }
    // A zero-sized tensor is legal ONNX (an absent optional operand), so only size is checked.
    let s = Shape::fixed(dims.clone());
    if !dims.contains(&0) {
        s.check(&format!("tensor '{name}'"))?;
    }
    let n = s.numel();
    let raw = &t.raw_data;
    use dtype::*;
    let data = match t.data_type {
        FLOAT => TensorData::F32(if !raw.is_empty() {
            raw_chunks::<4>(raw, n, name)?
                .into_iter()
                .map(f32::from_le_bytes)
                .collect()
        } else {
            t.float_data.clone()
        }),
        DOUBLE => {
            let wide: Vec<f64> = if !raw.is_empty() {
                raw_chunks::<8>(raw, n, name)?
                    .into_iter()
                    .map(f64::from_le_bytes)
                    .collect()
            } else {
                t.double_data.clone()
            };
            TensorData::F32(narrow(&wide, name)?)
        }
        FLOAT16 | BFLOAT16 => {
            let bits: Vec<u16> = if !raw.is_empty() {
                raw_chunks::<2>(raw, n, name)?
                    .into_iter()
                    .map(u16::from_le_bytes)
                    .collect()
            } else {
                t.int32_data.iter().map(|&x| x as u16).collect()
            };
            TensorData::F32(
                bits.into_iter()
                    .map(|b| {
                        if t.data_type == FLOAT16 {
                            half::f16::from_bits(b).to_f32()
                        } else {
                            half::bf16::from_bits(b).to_f32()
                        }
                    })
                    .collect(),
            )
        }
        INT64 => TensorData::I64(if !raw.is_empty() {
            raw_chunks::<8>(raw, n, name)?
                .into_iter()
                .map(i64::from_le_bytes)
                .collect()
        } else {
            t.int64_data.clone()
        }),
        INT32 => TensorData::I64(if !raw.is_empty() {
            raw_chunks::<4>(raw, n, name)?
                .into_iter()
                .map(|b| i32::from_le_bytes(b) as i64)
                .collect()
        } else {
            t.int32_data.iter().map(|&x| x as i64).collect()
        }),
        INT8 | UINT8 | BOOL | INT16 | UINT16 => {
            let signed = matches!(t.data_type, INT8 | INT16);
            let width = if matches!(t.data_type, INT16 | UINT16) {
                2
            } else {
                1
            };
            TensorData::I64(if !raw.is_empty() {
                if raw.len() != n * width {
                    return Err(Error::invalid(format!(
                        "tensor '{name}' has {} bytes, needs {}",
                        raw.len(),
                        n * width
                    )));
                }
                raw.chunks_exact(width)
                    .map(|c| match (width, signed) {
                        (1, true) => c[0] as i8 as i64,
                        (1, false) => c[0] as i64,
                        (_, true) => i16::from_le_bytes([c[0], c[1]]) as i64,
                        _ => u16::from_le_bytes([c[0], c[1]]) as i64,
                    })
                    .collect()
            } else {
                t.int32_data.iter().map(|&x| x as i64).collect()
            })
        }
        other => {
            return Err(Error::unsupported(format!(
                "tensor '{name}' has element type {} ({other})",
                dtype::name(other)
            )))
        }
    };
    let c = Constant { dims, data };
    if c.len() != n {
        return Err(Error::invalid(format!(
            "tensor '{name}' holds {} values, its dims {:?} need {n}",
            c.len(),
            c.dims
        )));
    }
    Ok(c)
}

/// Encode a constant as a TensorProto with little-endian `raw_data`.
pub fn encode(name: &str, c: &Constant) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.dims = c.dims.iter().map(|&d| d as i64).collect();
    match &c.data {
        TensorData::F32(v) => {
            t.data_type = dtype::FLOAT;
            t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
        TensorData::I64(v) => {
            t.data_type = dtype::INT64;
            t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
    }
    t
}

/// Read a serialized TensorProto file (the `input_0.pb` files of ONNX test data).
pub fn read_pb(path: &std::path::Path) -> Result<Constant> {
    use protobuf::Message;
    let bytes = std::fs::read(path)
        .map_err(|e| Error::new(crate::error::ErrorKind::Io(e.to_string())).in_file(path))?;
    let t = TensorProto::parse_from_bytes(&bytes)
        .map_err(|e| Error::new(crate::error::ErrorKind::Parse(e.to_string())).in_file(path))?;
    decode(&t).map_err(|e| e.in_file(path))
}

/// Write a constant as a serialized TensorProto file.
pub fn write_pb(path: &std::path::Path, name: &str, c: &Constant) -> Result<()> {
    use protobuf::Message;
    let bytes = encode(name, c)
        .write_to_bytes()
        .map_err(|e| Error::exec(e.to_string()))?;
    crate::files::write_bytes(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// float64 tensors become f32 only when f32 holds their values: 1e300 (inf in f32) and
    /// 6.9e-310 (0 in f32) are refused with the value named; 0, inf, NaN and 1e-30 pass.
    #[test]
    fn float64_values_outside_float32_are_refused() {
        let t = |v: Vec<f64>| {
            let mut t = TensorProto::new();
            t.name = "x".into();
            t.dims = vec![v.len() as i64];
            t.data_type = dtype::DOUBLE;
            t.double_data = v;
            decode(&t)
        };
        let ok = t(vec![0.0, f64::INFINITY, 1e-30, -2.5]).unwrap();
        assert_eq!(ok.as_f32(), vec![0.0, f32::INFINITY, 1e-30, -2.5]);
        assert!(t(vec![f64::NAN]).unwrap().as_f32()[0].is_nan());
        for (v, shown) in [
            (1e300, "1e300"),
            (-6.94648680255427e-310, "-6.94648680255427e-310"),
        ] {
            let e = t(vec![1.0, v]).unwrap_err().to_string();
            assert!(
                e.contains(shown) && e.contains("outside float32's range"),
                "{e}"
            );
        }
    }

    /// A model input read from a file of integers (old test data stores bfloat16 as uint16)
    /// is refused with the file's type named, not read as numbers.
    #[test]
    fn integer_files_are_not_float_inputs() {
        use protobuf::Message;
        let dir = std::env::temp_dir().join(format!("ecc-pb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("input_0.pb");
        let mut t = TensorProto::new();
        t.dims = vec![2];
        t.data_type = dtype::UINT16;
        t.int32_data = vec![16256, 16384];
        std::fs::write(&path, t.write_to_bytes().unwrap()).unwrap();
        let e = read_pb_float(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("uint16") && e.contains("input_0.pb"), "{e}");
    }

    #[test]
    fn raw_and_typed_fields_agree() {
        let c = Constant::f32(vec![2, 2], vec![1.0, -2.5, 3.25, 0.0]);
        assert_eq!(decode(&encode("w", &c)).unwrap(), c);
        let mut t = TensorProto::new();
        t.dims = vec![4];
        t.data_type = dtype::FLOAT;
        t.float_data = vec![1.0, -2.5, 3.25, 0.0];
        assert_eq!(decode(&t).unwrap().as_f32(), c.as_f32());
        let i = Constant::i64(vec![3], vec![-1, 0, 1 << 40]);
        assert_eq!(decode(&encode("s", &i)).unwrap(), i);
    }

    #[test]
    fn narrow_and_wide_floats_become_f32() {
        let mut t = TensorProto::new();
        t.dims = vec![2];
        t.data_type = dtype::FLOAT16;
        t.raw_data = [half::f16::from_f32(1.5), half::f16::from_f32(-0.25)]
            .iter()
            .flat_map(|h| h.to_bits().to_le_bytes())
            .collect();
        assert_eq!(decode(&t).unwrap().as_f32(), vec![1.5, -0.25]);
        t.data_type = dtype::DOUBLE;
        t.raw_data = [2.0f64, 0.5].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(decode(&t).unwrap().as_f32(), vec![2.0, 0.5]);
    }

    #[test]
    fn inconsistent_tensors_are_errors() {
        let mut t = TensorProto::new();
        t.name = "w".into();
        t.dims = vec![3];
        t.data_type = dtype::FLOAT;
        t.raw_data = vec![0; 8];
        assert!(decode(&t).unwrap_err().to_string().contains("tensor 'w'"));
        t.raw_data.clear();
        t.float_data = vec![1.0];
        assert!(decode(&t).is_err());
        t.dims = vec![-1];
        assert!(decode(&t).is_err());
        t.dims = vec![1];
        t.data_type = 8; // string
        assert!(decode(&t).unwrap_err().is_unsupported());
    }
}

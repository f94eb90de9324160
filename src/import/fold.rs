//! Constant folding at import: Constant, ConstantOfShape, shape arithmetic (Shape, Gather,
//! Cast) and layout ops whose inputs are all constants.

use super::ops::{Built, NodeCtx};
use super::tensor::{self, dtype};
use crate::error::{Error, Result};
use crate::ir::{Constant, Op, Shape, TensorData};

fn need_const(c: &NodeCtx) -> Result<()> {
    if c.all_const() {
        Ok(())
    } else {
        Err(Error::unsupported(format!(
            "{} over values computed at run time (ecc folds it only over constants)",
            c.node.op_type
        )))
    }
}

pub fn constant(c: &NodeCtx) -> Result<Built> {
    let a = &c.attrs;
    let value = if let Some(t) = a.get("value") {
        tensor::decode(
            t.t.as_ref()
                .ok_or_else(|| Error::invalid("attribute 'value' holds no tensor"))?,
        )?
    } else if let Some(f) = a.get("value_float") {
        Constant::f32(vec![], vec![f.f])
    } else if let Some(f) = a.get("value_floats") {
        Constant::f32(vec![f.floats.len()], f.floats.clone())
    } else if let Some(i) = a.get("value_int") {
        Constant::i64(vec![], vec![i.i])
    } else if let Some(i) = a.get("value_ints") {
        Constant::i64(vec![i.ints.len()], i.ints.clone())
    } else {
        return Err(Error::unsupported(
            "Constant without a value, value_float(s) or value_int(s)",
        ));
    };
    Ok(Built::Consts(vec![value]))
}

pub fn constant_of_shape(c: &NodeCtx) -> Result<Built> {
    need_const(c)?;
    let dims = c
        .constant(0)
        .ok_or_else(|| Error::invalid("ConstantOfShape needs a shape input"))?
        .as_i64();
    let mut d = Vec::with_capacity(dims.len());
    for &x in &dims {
        if x < 0 {
            return Err(Error::shape(format!(
                "ConstantOfShape dims {dims:?} has a negative entry"
            )));
        }
        d.push(x as usize);
    }
    Shape::fixed(d.clone()).check("ConstantOfShape output")?;
    let n: usize = d.iter().product();
    let value = match c.attrs.get("value").and_then(|v| v.t.as_ref()) {
        Some(t) => tensor::decode(t)?,
        None => Constant::f32(vec![1], vec![0.0]),
    };
    if value.len() != 1 {
        return Err(Error::invalid("attribute 'value' must hold one element"));
    }
    Ok(Built::Consts(vec![match value.data {
        TensorData::F32(v) => Constant::f32(d, vec![v[0]; n]),
        TensorData::I64(v) => Constant::i64(d, vec![v[0]; n]),
    }]))
}

pub fn shape(c: &NodeCtx) -> Result<Built> {
    let s = c.shape(0)?;
    let r = s.rank() as i64;
    let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clampi(c.attrs.int("start", 0));
    let end = clampi(c.attrs.int("end", r));
    let dims: Vec<i64> = s.dims[start..end.max(start)]
        .iter()
        .map(|&d| d as i64)
        .collect();
    Ok(Built::Consts(vec![Constant::i64(vec![dims.len()], dims)]))
}

pub fn gather(c: &NodeCtx) -> Result<Built> {
    need_const(c)?;
    let (Some(data), Some(idx)) = (c.constant(0), c.constant(1)) else {
        return Err(Error::invalid("Gather needs data and indices"));
    };
    let rank = data.dims.len();
    if rank == 0 {
        return Err(Error::invalid("Gather of a scalar"));
    }
    let axis = crate::ir::norm_axis(c.attrs.int("axis", 0), rank)?;
    let outer: usize = data.dims[..axis].iter().product();
    let len = data.dims[axis];
    let inner: usize = data.dims[axis + 1..].iter().product();
    let mut picks = vec![];
    for &i in &idx.as_i64() {
        let j = if i < 0 { i + len as i64 } else { i };
        if j < 0 || j as usize >= len {
            return Err(Error::invalid(format!(
                "Gather index {i} out of range for length {len}"
            )));
        }
        picks.push(j as usize);
    }
    let mut dims = data.dims[..axis].to_vec();
    dims.extend(&idx.dims);
    dims.extend(&data.dims[axis + 1..]);
    let mut src = Vec::with_capacity(outer * picks.len() * inner);
    for o in 0..outer {
        for &p in &picks {
            src.extend((0..inner).map(|k| (o * len + p) * inner + k));
        }
    }
    let out = match &data.data {
        TensorData::F32(v) => Constant::f32(dims, src.iter().map(|&i| v[i]).collect()),
        TensorData::I64(v) => Constant::i64(dims, src.iter().map(|&i| v[i]).collect()),
    };
    Ok(Built::Consts(vec![out]))
}

/// Expand over constants: the input broadcast against the shape operand (numpy rules: the
/// larger rank; per axis the two sizes agree or one of them is 1).
pub fn expand(c: &NodeCtx) -> Result<Built> {
    need_const(c)?;
    let (Some(x), Some(shape)) = (c.constant(0), c.constant(1)) else {
        return Err(Error::invalid("Expand needs an input and a shape"));
    };
    let want = shape.as_i64();
    let rank = x.dims.len().max(want.len());
    let pad = |d: &[usize], i: usize| {
        let off = rank - d.len();
        if i < off {
            1
        } else {
            d[i - off]
        }
    };
    let want: Vec<usize> = want.iter().map(|&v| v.max(0) as usize).collect();
    let mut dims = Vec::with_capacity(rank);
    for i in 0..rank {
        let (a, b) = (pad(&x.dims, i), pad(&want, i));
        dims.push(match (a, b) {
            _ if a == b || b == 1 => a,
            (1, _) => b,
            _ => {
                return Err(Error::shape(format!(
                    "Expand of {:?} to {:?}: axis {i} has {a} and {b}",
                    x.dims, want
                )))
            }
        });
    }
    Shape::fixed(dims.clone()).check("Expand output")?;
    let n: usize = dims.iter().product();
    let xd: Vec<usize> = (0..rank).map(|i| pad(&x.dims, i)).collect();
    let src: Vec<usize> = (0..n)
        .map(|mut k| {
            let (mut at, mut stride) = (0, 1);
            for i in (0..rank).rev() {
                let j = k % dims[i];
                k /= dims[i];
                if xd[i] != 1 {
                    at += j * stride;
                }
                stride *= xd[i];
            }
            at
        })
        .collect();
    Ok(Built::Consts(vec![match &x.data {
        TensorData::F32(v) => Constant::f32(dims, src.iter().map(|&i| v[i]).collect()),
        TensorData::I64(v) => Constant::i64(dims, src.iter().map(|&i| v[i]).collect()),
    }]))
}

/// CastLike: a Cast to the element type of the second input. Run-time values are floats in
/// ecc, so a cast like one of them is a cast to float: folded over a constant, the identity
/// at run time.
pub fn cast_like(c: &NodeCtx) -> Result<Built> {
    let to_float = c.constant(1).is_none_or(Constant::is_f32);
    match c.constant(0) {
        None if to_float => Ok(Built::Op(Op::Identity)),
        None => Err(Error::unsupported(
            "CastLike of a value computed at run time to an integer type (ecc computes in float)",
        )),
        Some(x) if to_float => Ok(Built::Consts(vec![Constant::f32(
            x.dims.clone(),
            x.as_f32(),
        )])),
        Some(x) => Ok(Built::Consts(vec![Constant::i64(
            x.dims.clone(),
            x.as_i64(),
        )])),
    }
}

pub fn cast(c: &NodeCtx) -> Result<Built> {
    let to = c.attrs.int("to", 0) as i32;
    // At run time, to float or double: ecc computes every float in f32, so the cast is the
    // identity (import states the conversion in a note). To a 16-bit float it would round,
    // which ecc does not do: refused.
    if !c.all_const() {
        match to {
            dtype::FLOAT | dtype::DOUBLE => return Ok(Built::Op(Op::Identity)),
            dtype::FLOAT16 | dtype::BFLOAT16 => {
                return Err(Error::unsupported(format!(
                    "Cast to {} at run time (ecc computes in float32 and does not round to 16-bit floats)",
                    dtype::name(to)
                )))
            }
            _ => {}
        }
    }
    need_const(c)?;
    let x = c
        .constant(0)
        .ok_or_else(|| Error::invalid("Cast needs an input"))?;
    let out = match to {
        dtype::FLOAT | dtype::DOUBLE | dtype::FLOAT16 => Constant::f32(x.dims.clone(), x.as_f32()),
        dtype::INT64 | dtype::INT32 | dtype::INT16 | dtype::INT8 | dtype::UINT8 | dtype::BOOL => {
            Constant::i64(x.dims.clone(), x.as_i64())
        }
        other => {
            return Err(Error::unsupported(format!(
                "Cast to {}",
                dtype::name(other)
            )))
        }
    };
    Ok(Built::Consts(vec![out]))
}

/// Evaluate a layout op over constant inputs; `None` for ops that do not fold.
pub fn eval_layout(op: &Op, args: &[&Constant], out: &Shape) -> Result<Option<Constant>> {
    let same = |c: &Constant| Constant {
        dims: out.dims.clone(),
        data: c.data.clone(),
    };
    Ok(match op {
        Op::Reshape { .. }
        | Op::Flatten { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Identity => Some(same(args[0])),
        Op::Concat { axis } => {
            let rank = args[0].dims.len();
            let a = crate::ir::norm_axis(*axis, rank)?;
            let outer: usize = out.dims[..a].iter().product();
            let all_f32 = args.iter().all(|c| c.is_f32());
            let all_i64 = args.iter().all(|c| !c.is_f32());
            if !all_f32 && !all_i64 {
                return Err(Error::invalid("Concat of float and integer constants"));
            }
            let chunks: Vec<usize> = args.iter().map(|c| c.dims[a..].iter().product()).collect();
            Some(if all_f32 {
                let vs: Vec<Vec<f32>> = args.iter().map(|c| c.as_f32()).collect();
                Constant::f32(out.dims.clone(), interleave(&vs, &chunks, outer))
            } else {
                let vs: Vec<Vec<i64>> = args.iter().map(|c| c.as_i64()).collect();
                Constant::i64(out.dims.clone(), interleave(&vs, &chunks, outer))
            })
        }
        _ => None,
    })
}

/// Concatenation along an axis: for each of `outer` blocks, take each part's chunk in turn.
fn interleave<T: Copy>(parts: &[Vec<T>], chunks: &[usize], outer: usize) -> Vec<T> {
    let mut r = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for o in 0..outer {
        for (v, &k) in parts.iter().zip(chunks) {
            r.extend_from_slice(&v[o * k..(o + 1) * k]);
        }
    }
    r
}

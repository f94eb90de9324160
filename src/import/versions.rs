//! The ONNX versions ecc reads, in one place (issue 16): IR versions, default-domain opsets,
//! and, for every op ecc imports, the opsets at which its definition changed.
//!
//! `OPS` lists each op's `since_version`s in the schemas of the onnx package (1.23.2: IR 14,
//! opset 28), as `scripts/onnx-versions.py` prints them. Every version up to 28 was read
//! against the one before; the changes after opset 20 are, for these ops, new element types
//! only (int4/uint4 in 21; float4e2m1 in 23; float8e8m0 in 24, with Cast's `round_mode`
//! attribute, which only applies to casts to float8e8m0; int2/uint2 in 25; float6 in 28 for
//! Cast; bfloat16 for the pooling ops, Conv and Dropout in 22), which ecc refuses at the
//! tensor (`import::tensor` reads float, double and the integer types), and, for MaxPool and
//! AveragePool 22, a sentence that states what ecc's ceil mode already does (a window that
//! would start in the right padding is dropped: `ir::shape::conv_out_len`). The forms that
//! differ by version are read by version where the op is built (`import::ops`: Squeeze's axes
//! before and after 13, Dropout's ratio before and after 12, ReduceMean's axes before and
//! after 18, ...). A model stamped newer than `IR_VERSIONS` or `OPSETS` is refused with a line
//! that says so: its ops may mean something ecc has not read.

use std::ops::RangeInclusive;

/// The IR versions ecc reads (14: the onnx package's default today).
pub const IR_VERSIONS: RangeInclusive<i64> = 3..=14;

/// The default-domain opsets ecc reads (28: the onnx package's default today).
pub const OPSETS: RangeInclusive<i64> = 6..=28;

/// Each op ecc imports with its `since_version`s up to the newest opset of [`OPSETS`].
pub const OPS: &[(&str, &[i64])] = &[
    ("Add", &[1, 6, 7, 13, 14]),
    ("AveragePool", &[1, 7, 10, 11, 19, 22]),
    ("BatchNormalization", &[1, 6, 7, 9, 14, 15]),
    ("Cast", &[1, 6, 9, 13, 19, 21, 23, 24, 25, 28]),
    ("CastLike", &[15, 19, 21, 23, 24, 25]),
    ("Clip", &[1, 6, 11, 12, 13]),
    ("Concat", &[1, 4, 11, 13]),
    ("Constant", &[1, 9, 11, 12, 13, 19, 21, 23, 24, 25]),
    ("ConstantOfShape", &[9, 20, 21, 23, 24, 25]),
    ("Conv", &[1, 11, 22]),
    ("ConvTranspose", &[1, 11, 22]),
    ("Div", &[1, 6, 7, 13, 14]),
    ("Dropout", &[1, 6, 7, 10, 12, 13, 22]),
    ("Expand", &[8, 13]),
    ("Flatten", &[1, 9, 11, 13, 21, 23, 24, 25]),
    ("Gather", &[1, 11, 13]),
    ("Gelu", &[20]),
    ("Gemm", &[1, 6, 7, 9, 11, 13]),
    ("GlobalAveragePool", &[1, 22]),
    ("GlobalMaxPool", &[1, 22]),
    ("HardSigmoid", &[1, 6, 22]),
    ("HardSwish", &[14, 22]),
    ("Identity", &[1, 13, 14, 16, 19, 21, 23, 24, 25]),
    ("InstanceNormalization", &[1, 6, 22]),
    ("LRN", &[1, 13]),
    ("LeakyRelu", &[1, 6, 16]),
    ("LogSoftmax", &[1, 11, 13]),
    ("MatMul", &[1, 9, 13]),
    ("Max", &[1, 6, 8, 12, 13]),
    ("MaxPool", &[1, 8, 10, 11, 12, 22]),
    ("Mean", &[1, 6, 8, 13]),
    ("Min", &[1, 6, 8, 12, 13]),
    ("Mul", &[1, 6, 7, 13, 14]),
    ("PRelu", &[1, 6, 7, 9, 16]),
    ("Pad", &[1, 2, 11, 13, 18, 19, 21, 23, 24, 25]),
    ("ReduceMean", &[1, 11, 13, 18]),
    ("Resize", &[10, 11, 13, 18, 19]),
    ("Relu", &[1, 6, 13, 14]),
    ("Reshape", &[1, 5, 13, 14, 19, 21, 23, 24, 25]),
    ("ScatterND", &[11, 13, 16, 18]),
    ("Shape", &[1, 13, 15, 19, 21, 23, 24, 25]),
    ("Sigmoid", &[1, 6, 13]),
    ("Slice", &[1, 10, 11, 13]),
    ("Softmax", &[1, 11, 13]),
    ("Squeeze", &[1, 11, 13, 21, 23, 24, 25]),
    ("Sub", &[1, 6, 7, 13, 14]),
    ("Split", &[1, 2, 11, 13, 18]),
    ("Sum", &[1, 6, 8, 13]),
    ("Tanh", &[1, 6, 13]),
    ("Transpose", &[1, 13, 21, 23, 24, 25]),
    ("Unsqueeze", &[1, 11, 13, 21, 23, 24, 25]),
    ("Upsample", &[1, 7, 9, 10]),
];

/// Why a model's IR version or default-domain opset cannot be read, if it cannot.
pub fn check(ir_version: i64, opset: i64) -> Option<String> {
    let what = |name: &str, v: i64, r: &RangeInclusive<i64>| {
        let why = if v > *r.end() {
            "newer than this ecc knows"
        } else {
            "older than ecc reads"
        };
        format!("{name} {v}: {why} (ecc reads {} to {})", r.start(), r.end())
    };
    if !IR_VERSIONS.contains(&ir_version) {
        return Some(what("IR version", ir_version, &IR_VERSIONS));
    }
    if !OPSETS.contains(&opset) {
        return Some(what("default-domain opset", opset, &OPSETS));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version of `op`'s definition a model of default-domain opset `opset` uses: its
    /// latest `since_version` at or below `opset` (None for an op not in [`OPS`]).
    fn op_version(op: &str, opset: i64) -> Option<i64> {
        let (_, since) = OPS.iter().find(|(n, _)| *n == op)?;
        since.iter().copied().filter(|&v| v <= opset).max()
    }

    /// Every op the importer builds has its versions here, and no list goes past the newest
    /// opset ecc reads or is out of order.
    #[test]
    fn the_table_covers_the_importer() {
        for name in super::super::ops::op_names() {
            let op = name.split(' ').next().unwrap();
            assert!(
                op_version(op, *OPSETS.end()).is_some(),
                "{op} has no versions"
            );
        }
        for (op, since) in OPS {
            assert!(since.windows(2).all(|w| w[0] < w[1]), "{op}");
            assert!(since.iter().all(|v| OPSETS.end() >= v), "{op}");
        }
        assert_eq!(op_version("Conv", 21), Some(11));
        assert_eq!(op_version("Conv", 28), Some(22));
        assert_eq!(op_version("Squeeze", 12), Some(11));
    }

    #[test]
    fn stamps_outside_the_table_are_named() {
        assert_eq!(check(14, 28), None);
        assert_eq!(check(3, 6), None);
        let e = check(15, 13).unwrap();
        assert!(
            e.contains("IR version 15: newer") && e.contains("3 to 14"),
            "{e}"
        );
        let e = check(8, 29).unwrap();
        assert!(
            e.contains("opset 29: newer") && e.contains("6 to 28"),
            "{e}"
        );
        let e = check(8, 5).unwrap();
        assert!(e.contains("opset 5: older"), "{e}");
    }
}

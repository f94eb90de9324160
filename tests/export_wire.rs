//! Issue 17 item 3: every scalar attribute ecc writes carries its value on the wire, also a
//! 0 (onnx.proto is proto2; a reader that tests presence, as onnx2torch does for Gemm's
//! `transA`, misreads an omitted 0). Checked on the raw bytes of ecc's exports of the
//! committed models, today's PyTorch exports (ConvTranspose, Resize) and zoo models with
//! pooling, BatchNorm and Dropout, by a small
//! protobuf wire reader (decoding through the generated code would hide presence).

mod common;
use ecc::import::{load_file, ImportOptions};
use ecc::zoo::{build, Spec};

/// The fields of one message: (field number, wire type, value or payload).
fn fields(mut b: &[u8]) -> Vec<(u64, u8, Vec<u8>)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[0];
            *b = &b[1..];
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = vec![];
    while !b.is_empty() {
        let key = varint(&mut b);
        let (num, wt) = (key >> 3, (key & 7) as u8);
        let payload = match wt {
            0 => varint(&mut b).to_le_bytes().to_vec(),
            1 => {
                let (p, rest) = b.split_at(8);
                b = rest;
                p.to_vec()
            }
            2 => {
                let n = varint(&mut b) as usize;
                let (p, rest) = b.split_at(n);
                b = rest;
                p.to_vec()
            }
            5 => {
                let (p, rest) = b.split_at(4);
                b = rest;
                p.to_vec()
            }
            other => panic!("wire type {other}"),
        };
        out.push((num, wt, payload));
    }
    out
}

/// (op type, attribute name, whether its value field is present) for every INT and FLOAT
/// attribute of the model's graph: ModelProto.graph = 7, GraphProto.node = 1,
/// NodeProto.op_type = 4, .attribute = 5; AttributeProto.name = 1, f = 2, i = 3, type = 20
/// (FLOAT = 1, INT = 2).
fn scalar_attributes(model: &[u8]) -> Vec<(String, String, bool)> {
    let mut out = vec![];
    let graph = fields(model)
        .into_iter()
        .find(|f| f.0 == 7)
        .expect("a graph")
        .2;
    for (_, _, node) in fields(&graph).into_iter().filter(|f| f.0 == 1) {
        let nf = fields(&node);
        let op = nf
            .iter()
            .find(|f| f.0 == 4)
            .map(|f| String::from_utf8_lossy(&f.2).to_string());
        for (_, _, attr) in nf.iter().filter(|f| f.0 == 5) {
            let af = fields(attr);
            let name = af
                .iter()
                .find(|f| f.0 == 1)
                .map(|f| String::from_utf8_lossy(&f.2).to_string());
            let ty = af.iter().find(|f| f.0 == 20).map(|f| f.2[0]);
            let value = match ty {
                Some(1) => 2,
                Some(2) => 3,
                _ => continue,
            };
            let present = af.iter().any(|f| f.0 == value);
            out.push((
                op.clone().unwrap_or_default(),
                name.unwrap_or_default(),
                present,
            ));
        }
    }
    out
}

#[test]
fn every_scalar_attribute_is_on_the_wire() {
    let mut graphs: Vec<(String, ecc::ir::Graph)> = common::committed_models()
        .into_iter()
        .map(|p| {
            (
                p.display().to_string(),
                load_file(&p, &ImportOptions::default()).unwrap(),
            )
        })
        .collect();
    // Today's PyTorch exports: ConvTranspose, Resize, PRelu, ReduceMean as read.
    for name in ["mlp", "cnn-prelu", "bn-mean", "decoder"] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/torch-export/{name}.onnx"));
        graphs.push((
            name.into(),
            load_file(&p, &ImportOptions::default()).unwrap(),
        ));
    }
    for spec in ["cnn:1x8x8-c4-b-p-c6-p-10", "resnet:1x8x8-n1-w2.2.2"] {
        graphs.push((
            spec.into(),
            build(&Spec::parse(spec).unwrap(), 0, true).unwrap(),
        ));
    }
    // The EC graphs (Gather's axis 0 among their attributes).
    let ecgs: Vec<(String, ecc::ir::Graph)> = graphs
        .iter()
        .filter(|(n, _)| n.ends_with("mlp-digits.onnx") || n.starts_with("resnet:"))
        .map(|(n, g)| {
            let c = ecc::ec::convert(g);
            (
                format!("{n}.ecg"),
                ecc::ec::graph::build(&c.canon, &c.basis).unwrap(),
            )
        })
        .collect();
    graphs.extend(ecgs);
    let mut checked = 0;
    for (name, g) in &graphs {
        let bytes = ecc::export::to_bytes(g).unwrap();
        let attrs = scalar_attributes(&bytes);
        for (op, attr, present) in &attrs {
            assert!(present, "{name}: {op}.{attr} has no value on the wire");
        }
        // The values read back are the ones written.
        let again = ecc::import::load_bytes(&bytes, &ImportOptions::default()).unwrap();
        assert_eq!(again.nodes, g.nodes, "{name}");
        checked += attrs.len();
    }
    // Gemm's transA = 0 of every MLP is among them: the check saw a zero-valued attribute.
    let mlp = ecc::export::to_bytes(
        &graphs
            .iter()
            .find(|(n, _)| n.ends_with("mlp-digits.onnx"))
            .unwrap()
            .1,
    )
    .unwrap();
    assert!(
        scalar_attributes(&mlp)
            .iter()
            .any(|(op, a, p)| op == "Gemm" && a == "transA" && *p),
        "no Gemm transA in mlp-digits"
    );
    assert!(checked > 0);
}

//! Attribute access for one node: typed getters whose errors name the attribute. The node
//! itself is attached to the error by the importer.

use crate::error::{Error, Result};
use onnx_protobuf::{AttributeProto, NodeProto};

pub struct Attrs<'a> {
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a NodeProto) -> Self {
        Attrs { node }
    }

    pub fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map(|a| a.i).unwrap_or(default)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map(|a| a.f).unwrap_or(default)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.get(name).map(|a| a.floats.clone())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    /// A list of non-negative sizes (kernel_shape, strides, pads, dilations).
    pub fn sizes(&self, name: &str) -> Result<Option<Vec<usize>>> {
        match self.ints(name) {
            None => Ok(None),
            Some(v) => v
                .iter()
                .map(|&x| {
                    if (0..=(1 << 20)).contains(&x) {
                        Ok(x as usize)
                    } else {
                        Err(Error::invalid(format!(
                            "attribute '{name}' has an invalid value {x}"
                        )))
                    }
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
        }
    }

    /// A size list of exactly `n` entries, or `default` repeated.
    pub fn sizes_n(&self, name: &str, n: usize, default: usize) -> Result<Vec<usize>> {
        match self.sizes(name)? {
            None => Ok(vec![default; n]),
            Some(v) if v.len() == n => Ok(v),
            Some(v) => Err(Error::invalid(format!(
                "attribute '{name}' has {} entries, expected {n}",
                v.len()
            ))),
        }
    }
}

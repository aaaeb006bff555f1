//! Validation findings that point back into the config file.
//!
//! The load balancer does not know about files; it names the offending key by its TOML path
//! (`listener[1].default_action.forward`). The binary turns that path into file:line:column.

use std::fmt;

/// One step of a TOML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// A problem found while validating config: where, what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: Vec<PathSeg>,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigIssue {
    pub fn new(path: Vec<PathSeg>, message: impl Into<String>) -> Self {
        ConfigIssue {
            path,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The path as a user reads it: `listener[1].rule[0].action.forward`.
    pub fn dotted_path(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            match seg {
                PathSeg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                PathSeg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.dotted_path(), self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Builds paths tersely: `path!["listener", 2, "bind"]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {
        vec![$($crate::IntoSeg::into_seg($seg)),*]
    };
}

pub trait IntoSeg {
    fn into_seg(self) -> PathSeg;
}
impl IntoSeg for &str {
    fn into_seg(self) -> PathSeg {
        PathSeg::Key(self.to_string())
    }
}
impl IntoSeg for usize {
    fn into_seg(self) -> PathSeg {
        PathSeg::Index(self)
    }
}
impl IntoSeg for PathSeg {
    fn into_seg(self) -> PathSeg {
        self
    }
}

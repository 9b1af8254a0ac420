//! The modules of `src/` (and of `bot-worker/src/`) form a DAG: no file
//! reaches, through the items it names, back to itself. ARCHITECTURE.md
//! draws the graph; this keeps it true.
//!
//! Each file is a node. An edge A → B means A names an item of B: through
//! `use`, or a path in code (`crate::…`, `super::…`, `self::…`, or a child
//! module's name). A `mod b;` declaration is not an edge: declaring a child
//! is not depending on it. So a `mod.rs` may declare and re-export its
//! children, and then its children must not use it: what they share lives
//! in a sibling leaf.
//!
//! Run with `--nocapture` to print the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every `.rs` file under `root`, by module path (`lib.rs`/`main.rs` are
/// the crate root, `[]`).
fn modules(root: &Path) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel: PathBuf = path
                .strip_prefix(root)
                .expect("under root")
                .with_extension("");
            let mut module: Module = rel
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            if module.is_empty() && path.file_name().is_some_and(|n| n == "main.rs") {
                continue; // a binary: it uses the library like any outside crate
            }
            out.insert(module, std::fs::read_to_string(&path).expect("read source"));
        }
    }
    out
}

/// The source without comments and string contents, which can hold
/// anything (URLs, `crate::` in prose).
fn code_of(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                out.push(' ');
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
            }
            // A char literal such as '"' or '{' must not open a string or a
            // group; lifetimes ('a) pass through harmlessly.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                let len = if rest.starts_with('\\') {
                    rest.find('\'').map(|i| i + 1)
                } else if rest.chars().nth(1) == Some('\'') {
                    Some(2)
                } else {
                    None
                };
                match len {
                    Some(n) => {
                        for _ in 0..n {
                            chars.next();
                        }
                        out.push(' ');
                    }
                    None => out.push(c),
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path the code names, as written: `a::b::c`, with `use` groups
/// (`a::{b, c::d}`) expanded. A path inside an inline module (`mod tests {
/// use super::*; }`) is rewritten as if written in the file's own module.
fn paths(code: &str) -> Vec<Vec<String>> {
    let tokens = tokenize(code);
    let mut out = Vec::new();
    // Brace depths at which inline modules opened.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).map(String::as_str) == Some("{") => {
                inline.push(depth);
                depth += 1;
                i += 3;
                continue;
            }
            _ => {}
        }
        if is_ident(&tokens[i]) && (i == 0 || tokens[i - 1] != "::") {
            let start = out.len();
            i = path_at(&tokens, i, Vec::new(), &mut out);
            for path in &mut out[start..] {
                outer_path(path, inline.len());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// `super` from `levels` inline modules deep means the file's module.
fn outer_path(path: &mut Vec<String>, levels: usize) {
    for _ in 0..levels {
        match path.first().map(String::as_str) {
            Some("super") => {
                path.remove(0);
                path.insert(0, "self".into());
                if path.len() > 1 && path[1] == "super" {
                    path.remove(0);
                }
            }
            Some("self") => {}
            _ => return,
        }
    }
}

/// Reads the path starting at `tokens[i]` under `prefix`; returns where it ends.
fn path_at(
    tokens: &[String],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix;
    while i < tokens.len() && is_ident(&tokens[i]) {
        path.push(tokens[i].clone());
        if tokens.get(i + 1).map(String::as_str) != Some("::") {
            out.push(path);
            return i + 1;
        }
        i += 2;
        if tokens.get(i).map(String::as_str) == Some("{") {
            i += 1;
            while i < tokens.len() && tokens[i] != "}" {
                if is_ident(&tokens[i]) {
                    i = path_at(tokens, i, path.clone(), out);
                } else {
                    i += 1; // `,`, `*`, `as`
                }
            }
            return i + 1;
        }
    }
    out.push(path);
    i
}

fn tokenize(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut ident = c.to_string();
            while let Some(&n) = chars.peek() {
                if n.is_alphanumeric() || n == '_' {
                    ident.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(ident);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            tokens.push("::".into());
        } else if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    tokens
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// The module a path written in `from` lands in, if it is one of ours.
fn resolve(from: &Module, path: &[String], known: &BTreeSet<Module>) -> Option<Module> {
    if path.len() < 2 {
        return None; // `pub(super)`, `self.x`: no path
    }
    let (mut base, rest): (Module, &[String]) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (from.clone(), &path[1..]),
        "super" => {
            let mut base = from.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            (base, rest)
        }
        child => {
            let mut m = from.clone();
            m.push(child.to_owned());
            if !known.contains(&m) {
                return None;
            }
            (from.clone(), path)
        }
    };
    let mut target = base.clone();
    for segment in rest {
        base.push(segment.clone());
        if known.contains(&base) {
            target = base.clone();
        } else {
            break;
        }
    }
    Some(target)
}

fn graph(root: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let files = modules(root);
    let known: BTreeSet<Module> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(module, source)| {
            let deps = paths(&code_of(source))
                .iter()
                .filter_map(|p| resolve(module, p, &known))
                .filter(|target| target != module && !target.is_empty())
                .collect();
            (module.clone(), deps)
        })
        .collect()
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'g> {
        graph: &'g BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'g Module, usize>,
        low: BTreeMap<&'g Module, usize>,
        stack: Vec<&'g Module>,
        on_stack: BTreeSet<&'g Module>,
        found: Vec<Vec<Module>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g Module) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn name(m: &Module) -> String {
    m.join("::")
}

fn check(root: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
    let graph = graph(&root);
    println!("{}:", root.display());
    for (module, deps) in &graph {
        let deps: Vec<String> = deps.iter().map(name).collect();
        println!("  {} -> {}", name(module), deps.join(", "));
    }
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles in {}: {}",
        root.display(),
        found
            .iter()
            .map(|c| c.iter().map(name).collect::<Vec<_>>().join(" <-> "))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn the_host_modules_form_a_dag() {
    check("src");
}

#[test]
fn the_worker_modules_form_a_dag() {
    check("bot-worker/src");
}

#[test]
fn the_checker_sees_use_groups_inline_paths_and_cycles() {
    let known: BTreeSet<Module> = [
        vec!["a".into()],
        vec!["b".into()],
        vec!["b".into(), "c".into()],
    ]
    .into_iter()
    .collect();
    let code = code_of(
        "use crate::{a::X, b::c::{Y, Z}};\n// crate::nope::Q\nfn f() { super::super::a::g(\"crate::x\"); }",
    );
    let from: Module = vec!["b".into(), "c".into()];
    let targets: BTreeSet<Module> = paths(&code)
        .iter()
        .filter_map(|p| resolve(&from, p, &known))
        .collect();
    assert_eq!(
        targets,
        [vec!["a".into()], vec!["b".into(), "c".into()]]
            .into_iter()
            .collect()
    );
    let mut g = BTreeMap::new();
    g.insert(
        vec!["a".to_owned()],
        [vec!["b".to_owned()]].into_iter().collect(),
    );
    g.insert(
        vec!["b".to_owned()],
        [vec!["a".to_owned()]].into_iter().collect(),
    );
    assert_eq!(cycles(&g).len(), 1);
}

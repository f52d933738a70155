//! A reader for PyTorch checkpoints written by `torch.save` (the zip format, PyTorch ≥ 1.6's
//! default): `archive/data.pkl` is a pickle whose tensors refer, by persistent id, to raw
//! little-endian storages `archive/data/<key>`. A small pickle machine covers what state dicts and
//! the training scripts' wrappers hold (dicts, ordered dicts, lists, tuples, numbers, strings,
//! tensors); anything else becomes an opaque value, and only a tensor that needs it is an error.
//! No Python runs, and no pickled code is executed: only tensor rebuilding and `OrderedDict` are
//! interpreted.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// A tensor read from a checkpoint, converted to float32 (the zoo's parameters and BatchNorm
/// statistics are float32), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PthTensor {
    pub shape: Vec<usize>,
    pub dtype: String,
    pub data: Vec<f32>,
}

#[derive(Clone, Debug)]
enum V {
    None,
    /// A bool or a float (nothing kdlab reads).
    Scalar,
    Int(i64),
    Str(String),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Global(String),
    /// (storage type name, key in archive/data/).
    Storage(String, String),
    Tensor(Box<PthTensor>),
    /// A value kdlab does not interpret (bytes, an object of another class).
    Opaque,
    Mark,
}

/// Every tensor of a checkpoint under its key: a state dict, or the first state dict found under
/// `state_dict`, `model`, `model_state_dict`, `net` or `student` in a wrapper dict. A `module.`
/// prefix on every key (`nn.DataParallel`) is removed.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, PthTensor>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a PyTorch zip checkpoint ({e}); truncated, or saved with \
             _use_new_zipfile_serialization=False: load it in PyTorch and torch.save it again",
            path.display()
        )
    })?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .with_context(|| {
            format!("{}: a zip file without <archive>/data.pkl: not a torch.save checkpoint", path.display())
        })?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut bytes = vec![];
    zip.by_name(&pkl)
        .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
        .with_context(|| format!("{}: reading {pkl}", path.display()))?;
    let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut load = |key: &str| -> Result<Vec<u8>> {
        if let Some(b) = storages.get(key) {
            return Ok(b.clone());
        }
        let name = format!("{prefix}data/{key}");
        let mut b = vec![];
        zip.by_name(&name)
            .and_then(|mut f| f.read_to_end(&mut b).map_err(Into::into))
            .with_context(|| format!("{}: reading the tensor storage {name}", path.display()))?;
        storages.insert(key.to_string(), b.clone());
        Ok(b)
    };
    let root = unpickle(&bytes, &mut load).with_context(|| format!("{}: reading {pkl}", path.display()))?;
    let dict = state_dict_of(&root).with_context(|| {
        format!("{}: holds no state dict (a dict of tensors, or one under 'state_dict' or 'model')", path.display())
    })?;
    let mut out = BTreeMap::new();
    for (k, v) in dict {
        if let (V::Str(k), V::Tensor(t)) = (k, v) {
            out.insert(k.clone(), (**t).clone());
        }
    }
    if !out.is_empty() && out.keys().all(|k| k.starts_with("module.")) {
        out = out.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect();
    }
    Ok(out)
}

/// The state dict in a checkpoint's root value.
fn state_dict_of(v: &V) -> Option<&Vec<(V, V)>> {
    let V::Dict(items) = v else { return None };
    if items.iter().any(|(_, v)| matches!(v, V::Tensor(_))) {
        return Some(items);
    }
    for key in ["state_dict", "model", "model_state_dict", "net", "student"] {
        if let Some((_, inner)) = items.iter().find(|(k, _)| matches!(k, V::Str(s) if s == key)) {
            if let Some(d) = state_dict_of(inner) {
                return Some(d);
            }
        }
    }
    None
}

fn element_size(storage: &str) -> Option<(usize, &'static str)> {
    Some(match storage {
        "FloatStorage" => (4, "float32"),
        "DoubleStorage" => (8, "float64"),
        "HalfStorage" => (2, "float16"),
        "BFloat16Storage" => (2, "bfloat16"),
        "LongStorage" => (8, "int64"),
        "IntStorage" => (4, "int32"),
        "ShortStorage" => (2, "int16"),
        "CharStorage" => (1, "int8"),
        "ByteStorage" => (1, "uint8"),
        "BoolStorage" => (1, "bool"),
        _ => return None,
    })
}

/// Element `i` of a little-endian storage, as f32.
fn element(bytes: &[u8], dtype: &str, i: usize) -> f32 {
    let b = |n: usize| &bytes[i * n..(i + 1) * n];
    match dtype {
        "float32" => f32::from_le_bytes(b(4).try_into().unwrap()),
        "float64" => f64::from_le_bytes(b(8).try_into().unwrap()) as f32,
        "float16" => half::f16::from_le_bytes(b(2).try_into().unwrap()).to_f32(),
        "bfloat16" => half::bf16::from_le_bytes(b(2).try_into().unwrap()).to_f32(),
        "int64" => i64::from_le_bytes(b(8).try_into().unwrap()) as f32,
        "int32" => i32::from_le_bytes(b(4).try_into().unwrap()) as f32,
        "int16" => i16::from_le_bytes(b(2).try_into().unwrap()) as f32,
        "int8" => b(1)[0] as i8 as f32,
        _ => b(1)[0] as f32,
    }
}

fn as_ints(v: &V, what: &str) -> Result<Vec<usize>> {
    let (V::Tuple(items) | V::List(items)) = v else { bail!("a tensor's {what} is not a tuple") };
    items
        .iter()
        .map(|x| match x {
            V::Int(i) if *i >= 0 => Ok(*i as usize),
            _ => bail!("a tensor's {what} holds a non-integer"),
        })
        .collect()
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`, any strides.
fn rebuild_tensor(args: &[V], load: &mut dyn FnMut(&str) -> Result<Vec<u8>>) -> Result<V> {
    let [V::Storage(kind, key), V::Int(offset), size, stride, ..] = args else {
        bail!("a tensor is not (storage, offset, size, stride, …)")
    };
    let (esize, dtype) =
        element_size(kind).with_context(|| format!("tensors of storage type {kind} are not supported"))?;
    let (shape, stride) = (as_ints(size, "size")?, as_ints(stride, "stride")?);
    if shape.len() != stride.len() {
        bail!("a tensor's size and stride differ in length");
    }
    let bytes = load(key)?;
    let elements = bytes.len() / esize;
    let numel: usize = shape.iter().product();
    let mut data = Vec::with_capacity(numel);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..numel {
        let at = *offset as usize + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
        if at >= elements {
            bail!("a tensor reaches element {at} of storage {key}, which has {elements}: the file is damaged");
        }
        data.push(element(&bytes, dtype, at));
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(V::Tensor(Box::new(PthTensor { shape, dtype: dtype.to_string(), data })))
}

/// Runs the pickle program in `bytes` (protocols 2 to 5, the opcodes torch.save emits).
fn unpickle(bytes: &[u8], load: &mut dyn FnMut(&str) -> Result<Vec<u8>>) -> Result<V> {
    let mut stack: Vec<V> = vec![];
    let mut memo: BTreeMap<u32, V> = BTreeMap::new();
    let mut pos = 0usize;
    let take = |n: usize, pos: &mut usize| -> Result<&[u8]> {
        let s = bytes.get(*pos..*pos + n).context("the pickle ends early: the file is truncated")?;
        *pos += n;
        Ok(s)
    };
    fn pop(stack: &mut Vec<V>) -> Result<V> {
        stack.pop().context("a malformed pickle (its stack is empty)")
    }
    fn pop_mark(stack: &mut Vec<V>) -> Result<Vec<V>> {
        let at = stack.iter().rposition(|v| matches!(v, V::Mark)).context("a malformed pickle (no mark)")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    }
    fn pairs(items: Vec<V>) -> Vec<(V, V)> {
        let mut it = items.into_iter();
        let mut out = vec![];
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        out
    }
    loop {
        let op = take(1, &mut pos)?[0];
        match op {
            0x80 => pos += 1,               // PROTO
            0x95 => pos += 8,               // FRAME
            b'.' => return pop(&mut stack), // STOP
            b'(' => stack.push(V::Mark),
            b'}' => stack.push(V::Dict(vec![])),
            b']' => stack.push(V::List(vec![])),
            b')' => stack.push(V::Tuple(vec![])),
            b'N' => stack.push(V::None),
            0x88 | 0x89 => stack.push(V::Scalar),
            b'J' => stack.push(V::Int(i32::from_le_bytes(take(4, &mut pos)?.try_into()?) as i64)),
            b'K' => stack.push(V::Int(take(1, &mut pos)?[0] as i64)),
            b'M' => stack.push(V::Int(u16::from_le_bytes(take(2, &mut pos)?.try_into()?) as i64)),
            0x8a => {
                // LONG1
                let n = take(1, &mut pos)?[0] as usize;
                let b = take(n, &mut pos)?;
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate().take(8) {
                    v |= (x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(V::Int(v));
            }
            b'G' => {
                take(8, &mut pos)?;
                stack.push(V::Scalar);
            }
            b'X' | 0x8c | 0x8d => {
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                let n = match op {
                    b'X' => u32::from_le_bytes(take(4, &mut pos)?.try_into()?) as usize,
                    0x8c => take(1, &mut pos)?[0] as usize,
                    _ => u64::from_le_bytes(take(8, &mut pos)?.try_into()?) as usize,
                };
                stack.push(V::Str(String::from_utf8_lossy(take(n, &mut pos)?).into_owned()));
            }
            b'C' | b'B' | 0x8e => {
                // SHORT_BINBYTES, BINBYTES, BINBYTES8: kept opaque
                let n = match op {
                    b'C' => take(1, &mut pos)?[0] as usize,
                    b'B' => u32::from_le_bytes(take(4, &mut pos)?.try_into()?) as usize,
                    _ => u64::from_le_bytes(take(8, &mut pos)?.try_into()?) as usize,
                };
                take(n, &mut pos)?;
                stack.push(V::Opaque);
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(V::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    bail!("a malformed pickle (short tuple)");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(V::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(V::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                stack.push(V::Dict(pairs(items)));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                if let Some(V::List(l)) = stack.last_mut() {
                    l.push(v);
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                if let Some(V::List(l)) = stack.last_mut() {
                    l.extend(items);
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                if let Some(V::Dict(d)) = stack.last_mut() {
                    d.push((k, v));
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                if let Some(V::Dict(d)) = stack.last_mut() {
                    d.extend(pairs(items));
                }
            }
            b'c' => {
                // GLOBAL: "module\nname\n"
                let mut line = || -> Result<String> {
                    let end = bytes[pos..].iter().position(|&b| b == b'\n').context("the pickle ends early")?;
                    let s = String::from_utf8_lossy(&bytes[pos..pos + end]).into_owned();
                    pos += end + 1;
                    Ok(s)
                };
                let (module, name) = (line()?, line()?);
                stack.push(V::Global(format!("{module}.{name}")));
            }
            0x93 => {
                // STACK_GLOBAL
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                let (V::Str(m), V::Str(n)) = (module, name) else { bail!("a malformed pickle (STACK_GLOBAL)") };
                stack.push(V::Global(format!("{m}.{n}")));
            }
            b'Q' => {
                // BINPERSID: ('storage', storage type, key, location, numel)
                let pid = pop(&mut stack)?;
                let V::Tuple(t) = pid else { bail!("a persistent id that is not a tuple") };
                match &t[..] {
                    [V::Str(tag), V::Global(kind), V::Str(key), ..] if tag == "storage" => {
                        let kind = kind.rsplit('.').next().unwrap_or(kind).to_string();
                        stack.push(V::Storage(kind, key.clone()));
                    }
                    _ => bail!("a persistent id other than a tensor storage"),
                }
            }
            b'R' | 0x81 => {
                // REDUCE, NEWOBJ
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                let args = match args {
                    V::Tuple(a) => a,
                    other => vec![other],
                };
                let v = match &f {
                    V::Global(g) if g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_tensor" => {
                        rebuild_tensor(&args, load)?
                    }
                    V::Global(g) if g == "torch._utils._rebuild_parameter" => {
                        args.into_iter().next().context("_rebuild_parameter without a tensor")?
                    }
                    V::Global(g) if g == "collections.OrderedDict" => V::Dict(vec![]),
                    _ => V::Opaque,
                };
                stack.push(v);
            }
            b'b' => {
                // BUILD: an object's state (an OrderedDict's _metadata): dropped.
                pop(&mut stack)?;
            }
            b'q' => {
                let k = take(1, &mut pos)?[0] as u32;
                memo.insert(k, stack.last().context("a malformed pickle (memo)")?.clone());
            }
            b'r' => {
                let k = u32::from_le_bytes(take(4, &mut pos)?.try_into()?);
                memo.insert(k, stack.last().context("a malformed pickle (memo)")?.clone());
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, stack.last().context("a malformed pickle (memo)")?.clone());
            }
            b'h' => {
                let k = take(1, &mut pos)?[0] as u32;
                stack.push(memo.get(&k).context("a malformed pickle (memo)")?.clone());
            }
            b'j' => {
                let k = u32::from_le_bytes(take(4, &mut pos)?.try_into()?);
                stack.push(memo.get(&k).context("a malformed pickle (memo)")?.clone());
            }
            other => bail!("pickle opcode 0x{other:02x} at byte {} is not supported", pos - 1),
        }
    }
}

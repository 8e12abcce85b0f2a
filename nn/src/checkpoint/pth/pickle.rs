//! A pickle reader for the `data.pkl` of a PyTorch checkpoint: a stack machine over the opcodes
//! of protocols 2-4 (`Lib/pickletools.py` documents each), with no code execution at all. A
//! `GLOBAL` becomes a name, and `REDUCE` understands only the callables a state dict uses:
//!
//! * `collections.OrderedDict()` -> an empty dict (its items follow as `SETITEMS`);
//! * `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, ...)`
//!   and `_rebuild_tensor` -> a [`TensorRef`] (where the data lies, not the data);
//! * `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)` -> that tensor.
//!
//! Any other call becomes an opaque [`Value::Object`] naming its callable: a checkpoint's extra
//! entries (an epoch counter, an optimiser) may be anything, and only tensors are read. Storages
//! arrive through `BINPERSID` with the persistent id `('storage', torch.FloatStorage, key,
//! location, numel)`: the key names the archive file `data/<key>` holding the raw elements.
//!
//! The memo keeps a copy of the value at `PUT` time. Python shares the object instead, so a list
//! or dict that is memoised, then filled, then fetched again would read as it was when memoised;
//! PyTorch's state dicts fetch only storages, tensors and globals again, which never change.

use std::collections::HashMap;

/// Where one tensor's elements lie: storage `key` of `dtype` (the storage class's name, e.g.
/// `FloatStorage`), starting `offset` elements in, with `size` and `stride` in elements.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// Storage class name (`FloatStorage`, `HalfStorage`, `LongStorage`, ...).
    pub dtype: String,
    /// Archive key: the data is in `<archive>/data/<key>`.
    pub key: String,
    /// Offset in elements.
    pub offset: usize,
    /// Shape.
    pub size: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// A pickled value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A global name `module.name` (a class or function, never called).
    Global(String, String),
    /// A storage from `BINPERSID`: class name, archive key.
    Storage(String, String),
    /// A tensor.
    Tensor(TensorRef),
    /// The result of calling something we do not model (e.g. `argparse.Namespace(...)`).
    Object(String),
}

fn int(v: &Value, what: &str) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(*b as i64),
        other => Err(format!("{what}: expected an integer, found {other:?}")),
    }
}

fn usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|x| int(x, what).and_then(|i| usize::try_from(i).map_err(|_| format!("{what}: negative {i}"))))
            .collect(),
        other => Err(format!("{what}: expected a tuple of integers, found {other:?}")),
    }
}

/// The value a `REDUCE` of `func(*args)` stands for.
fn reduce(func: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = &func else {
        return Err(format!("REDUCE of a non-global callable {func:?}"));
    };
    let args = match args {
        Value::Tuple(a) => a,
        other => return Err(format!("REDUCE of {module}.{name} with non-tuple arguments {other:?}")),
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") if args.is_empty() => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            if args.len() < 4 {
                return Err(format!("{name}: {} arguments, expected at least 4", args.len()));
            }
            let Value::Storage(dtype, key) = &args[0] else {
                return Err(format!("{name}: first argument is not a storage but {:?}", args[0]));
            };
            let offset = usize::try_from(int(&args[1], "storage offset")?).map_err(|_| "negative storage offset")?;
            let size = usizes(&args[2], "tensor size")?;
            let stride = usizes(&args[3], "tensor stride")?;
            if size.len() != stride.len() {
                return Err(format!("{name}: size {size:?} and stride {stride:?} differ in length"));
            }
            Ok(Value::Tensor(TensorRef { dtype: dtype.clone(), key: key.clone(), offset, size, stride }))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            other => Err(format!("{name}: expected a tensor, found {other:?}")),
        },
        _ => Ok(Value::Object(format!("{module}.{name}"))),
    }
}

/// Run the pickle program `data` and return the value it builds.
pub fn load(data: &[u8]) -> Result<Value, String> {
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = data.get(*at..*at + n).ok_or_else(|| format!("truncated pickle at byte {}", *at))?;
        *at += n;
        Ok(s)
    };
    let le = |b: &[u8]| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64);
    fn pop(stack: &mut Vec<Value>, op: u8) -> Result<Value, String> {
        stack.pop().ok_or_else(|| format!("opcode {:?}: empty stack", op as char))
    }
    fn since_mark(stack: &mut Vec<Value>, marks: &mut Vec<usize>, op: u8) -> Result<Vec<Value>, String> {
        let m = marks.pop().ok_or_else(|| format!("opcode {:?}: no MARK", op as char))?;
        if m > stack.len() {
            return Err(format!("opcode {:?}: MARK above the stack", op as char));
        }
        Ok(stack.split_off(m))
    }
    fn line(data: &[u8], at: &mut usize) -> Result<String, String> {
        let rest = &data[*at..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("unterminated GLOBAL name")?;
        *at += n + 1;
        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
    }
    fn set_items(target: &mut Value, items: Vec<Value>) -> Result<(), String> {
        let Value::Dict(d) = target else { return Err(format!("SETITEM(S) on a non-dict {target:?}")) };
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }
    loop {
        let op = *take(&mut at, 1)?.first().expect("one byte");
        match op {
            0x80 => {
                let proto = take(&mut at, 1)?[0];
                if proto > 5 {
                    return Err(format!("pickle protocol {proto} is newer than 5"));
                }
            }
            0x95 => {
                take(&mut at, 8)?; // FRAME: a length hint
            }
            b'.' => return pop(&mut stack, op),
            b'(' => marks.push(stack.len()),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(le(take(&mut at, 4)?) as u32 as i32 as i64)),
            b'K' => stack.push(Value::Int(take(&mut at, 1)?[0] as i64)),
            b'M' => stack.push(Value::Int(le(take(&mut at, 2)?) as i64)),
            0x8a => {
                // LONG1: n bytes of two's-complement little-endian.
                let n = take(&mut at, 1)?[0] as usize;
                let b = take(&mut at, n)?;
                if n > 8 {
                    return Err(format!("integer of {n} bytes does not fit 64 bits"));
                }
                let v = if n == 0 { 0 } else { ((le(b) << (64 - 8 * n)) as i64) >> (64 - 8 * n) };
                stack.push(Value::Int(v));
            }
            b'G' => {
                let b: [u8; 8] = take(&mut at, 8)?.try_into().expect("8 bytes");
                stack.push(Value::Float(f64::from_be_bytes(b)));
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => le(take(&mut at, 4)?) as usize,
                    0x8c => take(&mut at, 1)?[0] as usize,
                    _ => le(take(&mut at, 8)?) as usize,
                };
                let s = take(&mut at, n)?;
                stack.push(Value::Str(String::from_utf8(s.to_vec()).map_err(|_| "a str that is not UTF-8")?));
            }
            b'T' | b'U' => {
                // BINSTRING / SHORT_BINSTRING (protocol 0-2 byte strings): decoded as latin-1 text.
                let n = if op == b'T' { le(take(&mut at, 4)?) as usize } else { take(&mut at, 1)?[0] as usize };
                stack.push(Value::Str(take(&mut at, n)?.iter().map(|&b| b as char).collect()));
            }
            b'B' | b'C' | 0x8e => {
                let n = match op {
                    b'B' => le(take(&mut at, 4)?) as usize,
                    b'C' => take(&mut at, 1)?[0] as usize,
                    _ => le(take(&mut at, 8)?) as usize,
                };
                stack.push(Value::Bytes(take(&mut at, n)?.to_vec()));
            }
            b')' => stack.push(Value::Tuple(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b't' => {
                let items = since_mark(&mut stack, &mut marks, op)?;
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = since_mark(&mut stack, &mut marks, op)?;
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = since_mark(&mut stack, &mut marks, op)?;
                let mut d = Value::Dict(Vec::new());
                set_items(&mut d, items)?;
                stack.push(d);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(format!("TUPLE{n} with {} values on the stack", stack.len()));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => take(&mut at, 1)?[0] as u32,
                    b'r' => le(take(&mut at, 4)?) as u32,
                    _ => memo.len() as u32, // MEMOIZE
                };
                let top = stack.last().ok_or("PUT on an empty stack")?.clone();
                memo.insert(key, top);
            }
            b'h' | b'j' => {
                let key = if op == b'h' { take(&mut at, 1)?[0] as u32 } else { le(take(&mut at, 4)?) as u32 };
                stack.push(memo.get(&key).cloned().ok_or_else(|| format!("GET of unknown memo key {key}"))?);
            }
            b'c' => {
                let module = line(data, &mut at)?;
                let name = line(data, &mut at)?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack, op)?;
                let module = pop(&mut stack, op)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    other => return Err(format!("STACK_GLOBAL of non-strings {other:?}")),
                }
            }
            b'R' => {
                let args = pop(&mut stack, op)?;
                let func = pop(&mut stack, op)?;
                stack.push(reduce(func, args)?);
            }
            0x81 => {
                // NEWOBJ cls(*args): never one of ours; keep the class name.
                let _args = pop(&mut stack, op)?;
                match pop(&mut stack, op)? {
                    Value::Global(m, n) => stack.push(Value::Object(format!("{m}.{n}"))),
                    other => return Err(format!("NEWOBJ of {other:?}")),
                }
            }
            b'b' => {
                // BUILD: obj.__setstate__(state). A state dict's `_metadata` arrives this way; the
                // state is not needed to read tensors.
                pop(&mut stack, op)?;
                if stack.is_empty() {
                    return Err("BUILD without an object".into());
                }
            }
            b'Q' => {
                let pid = pop(&mut stack, op)?;
                let Value::Tuple(p) = &pid else { return Err(format!("persistent id {pid:?} is not a tuple")) };
                match p.as_slice() {
                    [Value::Str(tag), Value::Global(_, class), Value::Str(key), ..] if tag == "storage" => {
                        stack.push(Value::Storage(class.clone(), key.clone()))
                    }
                    _ => return Err(format!("persistent id {pid:?} is not a storage")),
                }
            }
            b's' => {
                let v = pop(&mut stack, op)?;
                let k = pop(&mut stack, op)?;
                set_items(stack.last_mut().ok_or("SETITEM without a dict")?, vec![k, v])?;
            }
            b'u' => {
                let items = since_mark(&mut stack, &mut marks, op)?;
                set_items(stack.last_mut().ok_or("SETITEMS without a dict")?, items)?;
            }
            b'a' | b'e' => {
                let items =
                    if op == b'a' { vec![pop(&mut stack, op)?] } else { since_mark(&mut stack, &mut marks, op)? };
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    other => return Err(format!("APPEND(S) on a non-list {other:?}")),
                }
            }
            b'0' => {
                pop(&mut stack, op)?;
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {}: not a PyTorch state dict?",
                    at - 1
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_containers_and_memo() {
        // pickle.dumps({'a': [1, -2, 300, 70000, True, None, 1.5, 'x'], 'a2': (1,)}, protocol=2),
        // written by hand: PROTO 2, EMPTY_DICT, BINPUT 0, MARK, ...
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend_from_slice(&[b'X', 1, 0, 0, 0, b'a', b']', b'q', 1, b'(']);
        p.extend_from_slice(&[b'K', 1, b'J']);
        p.extend_from_slice(&(-2i32).to_le_bytes());
        p.extend_from_slice(&[b'M', 0x2c, 0x01, b'J']);
        p.extend_from_slice(&70000i32.to_le_bytes());
        p.extend_from_slice(&[0x88, b'N', b'G']);
        p.extend_from_slice(&1.5f64.to_be_bytes());
        p.extend_from_slice(&[b'X', 1, 0, 0, 0, b'x', b'e']);
        p.extend_from_slice(&[b'X', 2, 0, 0, 0, b'a', b'2', b'K', 1, 0x85, b'u', b'.']);
        let v = load(&p).unwrap();
        let expect = Value::Dict(vec![
            (
                Value::Str("a".into()),
                Value::List(vec![
                    Value::Int(1),
                    Value::Int(-2),
                    Value::Int(300),
                    Value::Int(70000),
                    Value::Bool(true),
                    Value::None,
                    Value::Float(1.5),
                    Value::Str("x".into()),
                ]),
            ),
            (Value::Str("a2".into()), Value::Tuple(vec![Value::Int(1)])),
        ]);
        assert_eq!(v, expect);
        // BINGET of a memoised tuple.
        let q = [0x80, 2, b'K', 5, 0x85, b'q', 7, b'0', b'h', 7, b'.'];
        assert_eq!(load(&q).unwrap(), Value::Tuple(vec![Value::Int(5)]));
        // LONG1 negative and positive.
        assert_eq!(load(&[0x80, 2, 0x8a, 2, 0x00, 0x80, b'.']).unwrap(), Value::Int(-32768));
        assert_eq!(load(&[0x80, 2, 0x8a, 1, 0x7f, b'.']).unwrap(), Value::Int(127));
    }

    #[test]
    fn a_tensor_rebuild_becomes_a_reference() {
        // _rebuild_tensor_v2(persistent_load(('storage', torch.FloatStorage, '0', 'cpu', 6)),
        //                    2, (2, 2), (2, 1), False, OrderedDict())
        let mut p = vec![0x80, 2, b'c'];
        p.extend_from_slice(b"torch._utils\n_rebuild_tensor_v2\n");
        p.extend_from_slice(&[b'(', b'(', b'X', 7, 0, 0, 0]);
        p.extend_from_slice(b"storage");
        p.push(b'c');
        p.extend_from_slice(b"torch\nFloatStorage\n");
        p.extend_from_slice(&[b'X', 1, 0, 0, 0, b'0', b'X', 3, 0, 0, 0, b'c', b'p', b'u', b'K', 6, b't', b'Q']);
        p.extend_from_slice(&[b'K', 2, b'K', 2, b'K', 2, 0x86, b'K', 2, b'K', 1, 0x86, 0x89, b'c']);
        p.extend_from_slice(b"collections\nOrderedDict\n");
        p.extend_from_slice(&[b')', b'R', b't', b'R', b'.']);
        let v = load(&p).unwrap();
        assert_eq!(
            v,
            Value::Tensor(TensorRef {
                dtype: "FloatStorage".into(),
                key: "0".into(),
                offset: 2,
                size: vec![2, 2],
                stride: vec![2, 1]
            })
        );
    }

    #[test]
    fn bad_programs_are_errors_not_panics() {
        assert!(load(&[]).is_err());
        assert!(load(&[0x80, 2]).is_err());
        assert!(load(&[0x80, 9, b'.']).unwrap_err().contains("protocol"));
        assert!(load(&[0x80, 2, b'u', b'.']).is_err());
        assert!(load(&[0x80, 2, b'h', 3, b'.']).unwrap_err().contains("memo"));
        assert!(load(&[0x80, 2, b'X', 0xff, 0, 0, 0, b'a']).unwrap_err().contains("truncated"));
        assert!(load(&[0x80, 2, b'i', b'.']).unwrap_err().contains("opcode"));
        // Unknown callables are opaque objects, never executed.
        let mut p = vec![0x80, 2, b'c'];
        p.extend_from_slice(b"os\nsystem\n");
        p.extend_from_slice(&[b'X', 2, 0, 0, 0, b'l', b's', 0x85, b'R', b'.']);
        assert_eq!(load(&p).unwrap(), Value::Object("os.system".into()));
    }
}

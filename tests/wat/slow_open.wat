;; A plugin whose on-open spins for a while (tens of ms) and whose on-data passes:
;; the wasmtime tier's InlineGate must see on-open's time too.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get 3) (i32.const 15)) (i32.const -16))))
    (local.get $p))
  (func (export "on-open") (param i32 i32 i32 i32)
    (local $i i32)
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 30000000)))))
  (func (export "on-data") (param i32 i32 i32 i32) (result i32)
    (i32.store8 (i32.const 32) (i32.const 0))   ;; pass
    (i32.const 32))
  (func (export "on-close")))

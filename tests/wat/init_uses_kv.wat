;; A plugin whose start code (_initialize) calls a capability: kv.increment("boot", 1).
;; on-data replaces every chunk with the one byte '0' + (that count mod 10), so a
;; test sees which connection's capabilities the start code ran with.
(module
  (import "lightcell:filter/kv@0.1.0" "increment" (func $kv_inc (param i32 i32 i64) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "boot")
  (global $boot (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get 3) (i32.const 15)) (i32.const -16))))
    (local.get $p))
  (func (export "_initialize")
    (global.set $boot (i32.wrap_i64 (call $kv_inc (i32.const 0) (i32.const 4) (i64.const 1)))))
  (func (export "on-open") (param i32 i32 i32 i32))
  (func (export "on-data") (param i32 i32 i32 i32) (result i32)
    (i32.store8 (i32.const 64) (i32.add (i32.const 48) (i32.rem_u (global.get $boot) (i32.const 10))))
    (i32.store8 (i32.const 32) (i32.const 1))   ;; replace
    (i32.store (i32.const 36) (i32.const 64))   ;; ptr
    (i32.store (i32.const 40) (i32.const 1))    ;; len
    (i32.const 32))
  (func (export "on-close")))

;; An http-filter core module whose on-request-headers misbehaves as its
;; config's first byte says (tests/test_http_wasmtime.py):
;;   '0' continue                           '1' respond with status 99
;;   '2' set a header whose name is out of bounds
;;   '3' respond with a body over MAX_OUTPUT_BYTES
;;   '4' a body replacement from a headers hook
;;   '5' metadata.set("k", "v"), then continue
;;   '6' loop forever                       '7' a misaligned return area
;; wanted-phases is not a constant (the host calls it at load): request-headers
;; only. Every other hook is `unreachable`: the host must never call it.
(module
  (import "lightcell:filter/metadata@0.1.0" "set" (func $meta_set (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global $mode (mut i32) (i32.const 48))
  (global $heap (mut i32) (i32.const 4096))
  ;; '1': respond, status 99
  (data (i32.const 64) "\02\00\00\00\63\00")
  ;; '2': modify, set = [header @256], whose name pointer is 0xfffffff0
  (data (i32.const 128) "\01\00\00\00\00\01\00\00\01\00\00\00")
  (data (i32.const 256) "\f0\ff\ff\ff\08\00\00\00")
  ;; '3': respond 200 with a body of 0x800001 bytes
  (data (i32.const 192) "\02\00\00\00\c8\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\01\00\80\00")
  ;; '4': modify with body some(empty)
  (data (i32.const 320) "\01")
  (data (i32.const 348) "\01")
  ;; continue
  (data (i32.const 384) "\00")
  (data (i32.const 512) "kv")

  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  (func (export "wanted-phases") (result i32) (i32.or (i32.const 1) (i32.const 0)))
  (func (export "on-open") (param i32 i32 i32 i32)
    (if (i32.gt_u (local.get 3) (i32.const 0))
      (then (global.set $mode (i32.load8_u (local.get 2))))))
  (func (export "on-request-headers") (param i32 i32 i32 i32 i32) (result i32)
    (local $m i32)
    (local.set $m (i32.sub (global.get $mode) (i32.const 48)))
    (if (i32.eq (local.get $m) (i32.const 1)) (then (return (i32.const 64))))
    (if (i32.eq (local.get $m) (i32.const 2)) (then (return (i32.const 128))))
    (if (i32.eq (local.get $m) (i32.const 3)) (then (return (i32.const 192))))
    (if (i32.eq (local.get $m) (i32.const 4)) (then (return (i32.const 320))))
    (if (i32.eq (local.get $m) (i32.const 5))
      (then
        (call $meta_set (i32.const 512) (i32.const 1) (i32.const 513) (i32.const 1))
        (return (i32.const 384))))
    (if (i32.eq (local.get $m) (i32.const 6)) (then (loop $forever (br $forever))))
    (if (i32.eq (local.get $m) (i32.const 7)) (then (return (i32.const 66))))
    (i32.const 384))
  (func (export "on-request-body") (param i32 i32 i32) (result i32) unreachable)
  (func (export "on-request-trailers") (param i32 i32) (result i32) unreachable)
  (func (export "on-response-headers") (param i32 i32 i32 i32 i32) (result i32) unreachable)
  (func (export "on-response-body") (param i32 i32 i32) (result i32) unreachable)
  (func (export "on-response-trailers") (param i32 i32) (result i32) unreachable)
  (func (export "on-close")))

;; Imports a WASI function outside the allowed subset (file reads).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (func (export "on-open") (param i32 i32 i32 i32))
  (func (export "on-data") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "on-close"))
)

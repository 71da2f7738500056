;; Two memories: the memory cap is per memory in wasmtime, so this is refused.
(module
  (memory (export "memory") 1)
  (memory $second 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (func (export "on-open") (param i32 i32 i32 i32))
  (func (export "on-data") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "on-close"))
)

;; Breaks the contract: no on-close, and on-data has the wrong signature.
(module
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (func (export "on-open") (param i32 i32 i32 i32))
  (func (export "on-data") (param i32 i32 i32) (result i32) (i32.const 1024))
)

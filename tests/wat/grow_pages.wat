;; Grows its linear memory one page at a time until memory.grow refuses, then
;; replies with how many pages the memory reached (decimal ASCII). Probes the
;; listener's memory cap (`limits.memory_mb`) in both tiers: see
;; tests/test_memory_cap.py, which also rewrites the initial size below.
(module
  (memory (export "memory") 1)
  ;; Lowered chunks go to 4096 (the test sends a few bytes).
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (func (export "on-open") (param i32 i32 i32 i32))
  (func (export "on-data") (param $dir i32) (param $ptr i32) (param $len i32) (param $eos i32)
      (result i32)
    (local $v i32) (local $p i32)
    (loop $more (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    ;; decimal digits of memory.size, written backwards to end at 64
    (local.set $v (memory.size))
    (local.set $p (i32.const 64))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digits (local.get $v)))
    ;; replace(<digits>)
    (i32.store8 (i32.const 1024) (i32.const 1))
    (i32.store (i32.const 1028) (local.get $p))
    (i32.store (i32.const 1032) (i32.sub (i32.const 64) (local.get $p)))
    (i32.const 1024))
  (func (export "on-close"))
)

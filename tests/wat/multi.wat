;; A test plugin implementing the core contract by hand. The first byte of the
;; on-open config picks a behaviour; the rest of the config is its argument.
;;   u upper-case read chunks, pass write    n prefix "<count>:" (instance state)
;;   t trap (unreachable)                    l loop forever
;;   g grow memory until refused, then trap  k "kv=<kv.increment(hits,1)>"
;;   G kv.get(arg) -> value or "none"        S kv.set(arg, chunk), pass
;;   e egress to arg:9125 -> "ok"/"err<code>" c clock.wall-now   r random.get-u64
;;   L log(info, chunk), pass                m metadata.set(arg, chunk), pass
;;   b return area out of bounds             o replace(ptr 0xFFFFFF00, len 0x200)
;;   O replace(ptr 16, len 0xFFFFFFF8)       v verdict tag 9
;;   C close   R reset
(module
  (import "lightcell:filter/log@0.1.0" "log" (func $log (param i32 i32 i32)))
  (import "lightcell:filter/clock@0.1.0" "wall-now" (func $wall_now (result i64)))
  (import "lightcell:filter/random@0.1.0" "get-u64" (func $get_u64 (result i64)))
  (import "lightcell:filter/kv@0.1.0" "get" (func $kv_get (param i32 i32 i32)))
  (import "lightcell:filter/kv@0.1.0" "set" (func $kv_set (param i32 i32 i32 i32)))
  (import "lightcell:filter/kv@0.1.0" "increment" (func $kv_inc (param i32 i32 i64) (result i64)))
  (import "lightcell:filter/metadata@0.1.0" "set" (func $md_set (param i32 i32 i32 i32)))
  (import "lightcell:filter/egress@0.1.0" "send-datagram"
    (func $send (param i32 i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "hits")
  (data (i32.const 8) "none")
  (data (i32.const 16) "kv=")
  (data (i32.const 24) "ok")
  (data (i32.const 32) "err")
  (global $heap (mut i32) (i32.const 4096))
  (global $mode (mut i32) (i32.const 117)) ;; 'u'
  (global $arg_ptr (mut i32) (i32.const 0))
  (global $arg_len (mut i32) (i32.const 0))
  (global $count (mut i64) (i64.const 0))

  ;; Bump allocator; grows memory as needed, never frees.
  (func $cabi_realloc (export "cabi_realloc") (param $old i32) (param $old_size i32)
      (param $align i32) (param $size i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (i32.const -1)
              (memory.grow (i32.add (i32.const 1)
                (i32.shr_u (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
                           (i32.const 16)))))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (if (local.get $old)
      (then (memory.copy (local.get $p) (local.get $old) (local.get $old_size))))
    (local.get $p))

  ;; Decimal digits of $v (unsigned) at $dst; returns how many.
  (func $itoa (param $v i64) (param $dst i32) (result i32)
    (local $i i32)
    (loop $digits
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (i32.store8 (i32.sub (i32.const 2032) (local.get $i))
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digits (i64.ne (local.get $v) (i64.const 0))))
    (memory.copy (local.get $dst) (i32.sub (i32.const 2032) (local.get $i)) (local.get $i))
    (local.get $i))

  (func $verdict (param $tag i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store8 (i32.const 1024) (local.get $tag))
    (i32.store (i32.const 1028) (local.get $ptr))
    (i32.store (i32.const 1032) (local.get $len))
    (i32.const 1024))

  ;; replace(<prefix bytes at $pre, $pre_len> <decimal $v>)
  (func $reply_num (param $pre i32) (param $pre_len i32) (param $v i64) (result i32)
    (local $out i32) (local $n i32)
    (local.set $out (call $cabi_realloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 32)))
    (memory.copy (local.get $out) (local.get $pre) (local.get $pre_len))
    (local.set $n (call $itoa (local.get $v) (i32.add (local.get $out) (local.get $pre_len))))
    (call $verdict (i32.const 1) (local.get $out) (i32.add (local.get $pre_len) (local.get $n))))

  (func (export "on-open") (param $lp i32) (param $ll i32) (param $cp i32) (param $cl i32)
    (if (local.get $cl)
      (then
        (global.set $mode (i32.load8_u (local.get $cp)))
        (global.set $arg_ptr (i32.add (local.get $cp) (i32.const 1)))
        (global.set $arg_len (i32.sub (local.get $cl) (i32.const 1))))))

  (func (export "on-data") (param $dir i32) (param $ptr i32) (param $len i32) (param $eos i32)
      (result i32)
    (local $m i32) (local $i i32) (local $c i32) (local $out i32) (local $n i32)
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (local.set $m (global.get $mode))
    (if (i32.eq (local.get $m) (i32.const 117)) ;; u
      (then
        (if (local.get $dir) (then (return (call $verdict (i32.const 0) (i32.const 0) (i32.const 0)))))
        (loop $each
          (if (i32.lt_u (local.get $i) (local.get $len))
            (then
              (local.set $c (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
              (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
                (then (i32.store8 (i32.add (local.get $ptr) (local.get $i))
                        (i32.sub (local.get $c) (i32.const 32)))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $each))))
        (return (call $verdict (i32.const 1) (local.get $ptr) (local.get $len)))))
    (if (i32.eq (local.get $m) (i32.const 110)) ;; n
      (then
        (local.set $out (call $cabi_realloc (i32.const 0) (i32.const 0) (i32.const 1)
          (i32.add (local.get $len) (i32.const 24))))
        (local.set $n (call $itoa (global.get $count) (local.get $out)))
        (i32.store8 (i32.add (local.get $out) (local.get $n)) (i32.const 58))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (memory.copy (i32.add (local.get $out) (local.get $n)) (local.get $ptr) (local.get $len))
        (return (call $verdict (i32.const 1) (local.get $out) (i32.add (local.get $n) (local.get $len))))))
    (if (i32.eq (local.get $m) (i32.const 116)) (then unreachable)) ;; t
    (if (i32.eq (local.get $m) (i32.const 108)) (then (loop $forever (br $forever)))) ;; l
    (if (i32.eq (local.get $m) (i32.const 103)) ;; g
      (then
        (loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
        unreachable))
    (if (i32.eq (local.get $m) (i32.const 107)) ;; k
      (then (return (call $reply_num (i32.const 16) (i32.const 3)
        (call $kv_inc (i32.const 0) (i32.const 4) (i64.const 1))))))
    (if (i32.eq (local.get $m) (i32.const 71)) ;; G
      (then
        (call $kv_get (global.get $arg_ptr) (global.get $arg_len) (i32.const 1040))
        (if (i32.eqz (i32.load8_u (i32.const 1040)))
          (then (return (call $verdict (i32.const 1) (i32.const 8) (i32.const 4)))))
        (return (call $verdict (i32.const 1) (i32.load (i32.const 1044)) (i32.load (i32.const 1048))))))
    (if (i32.eq (local.get $m) (i32.const 83)) ;; S
      (then
        (call $kv_set (global.get $arg_ptr) (global.get $arg_len) (local.get $ptr) (local.get $len))
        (return (call $verdict (i32.const 0) (i32.const 0) (i32.const 0)))))
    (if (i32.eq (local.get $m) (i32.const 101)) ;; e
      (then
        (call $send (global.get $arg_ptr) (global.get $arg_len) (i32.const 9125)
          (local.get $ptr) (local.get $len) (i32.const 1056))
        (if (i32.eqz (i32.load8_u (i32.const 1056)))
          (then (return (call $verdict (i32.const 1) (i32.const 24) (i32.const 2)))))
        (return (call $reply_num (i32.const 32) (i32.const 3) (i64.load8_u (i32.const 1057))))))
    (if (i32.eq (local.get $m) (i32.const 99)) ;; c
      (then (return (call $reply_num (i32.const 0) (i32.const 0) (call $wall_now)))))
    (if (i32.eq (local.get $m) (i32.const 114)) ;; r
      (then (return (call $reply_num (i32.const 0) (i32.const 0) (call $get_u64)))))
    (if (i32.eq (local.get $m) (i32.const 76)) ;; L
      (then
        (call $log (i32.const 2) (local.get $ptr) (local.get $len))
        (return (call $verdict (i32.const 0) (i32.const 0) (i32.const 0)))))
    (if (i32.eq (local.get $m) (i32.const 109)) ;; m
      (then
        (call $md_set (global.get $arg_ptr) (global.get $arg_len) (local.get $ptr) (local.get $len))
        (return (call $verdict (i32.const 0) (i32.const 0) (i32.const 0)))))
    (if (i32.eq (local.get $m) (i32.const 98)) (then (return (i32.const 0xFFFFFFF0)))) ;; b
    (if (i32.eq (local.get $m) (i32.const 111)) ;; o
      (then (return (call $verdict (i32.const 1) (i32.const 0xFFFFFF00) (i32.const 0x200)))))
    (if (i32.eq (local.get $m) (i32.const 79)) ;; O
      (then (return (call $verdict (i32.const 1) (i32.const 16) (i32.const 0xFFFFFFF8)))))
    (if (i32.eq (local.get $m) (i32.const 118)) ;; v
      (then (return (call $verdict (i32.const 9) (i32.const 0) (i32.const 0)))))
    (if (i32.eq (local.get $m) (i32.const 67)) ;; C
      (then (return (call $verdict (i32.const 2) (i32.const 0) (i32.const 0)))))
    (if (i32.eq (local.get $m) (i32.const 82)) ;; R
      (then (return (call $verdict (i32.const 3) (i32.const 0) (i32.const 0)))))
    (call $verdict (i32.const 0) (i32.const 0) (i32.const 0)))

  (func (export "on-close"))
  (func (export "cabi_post_on-data") (param i32))
)

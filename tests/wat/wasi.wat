;; A bare core module using the WASI preview1 subset: on-data writes the chunk
;; to stdout (fd 1) and passes it. Config "x" makes on-data call proc_exit(3);
;; config "c" reads the realtime clock; config "r" fills 8 random bytes.
;; Grant-first probes (each replaces the chunk with the one-byte errno):
;; "3" fd_write(fd 3) with iovecs and nwritten pointing nowhere (EBADF when
;; granted: the fd is refused before the pointers are looked at); "0"
;; fd_write(fd 1) with zero iovecs. Config "R" calls random_get on a buffer
;; outside memory (an ABI fault when granted, DENIED when not).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (global $mode (mut i32) (i32.const 0))
  (func $cabi_realloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $p))
  (func (export "_initialize"))
  (func (export "on-open") (param i32 i32 i32) (param $cl i32)
    (if (local.get $cl) (then (global.set $mode (i32.load8_u (local.get 2))))))
  ;; replace the chunk with one byte, the errno
  (func $errno_verdict (param $errno i32) (result i32)
    (i32.store8 (i32.const 1056) (local.get $errno))
    (i32.store8 (i32.const 1024) (i32.const 1))
    (i32.store (i32.const 1028) (i32.const 1056))
    (i32.store (i32.const 1032) (i32.const 1))
    (i32.const 1024))
  (func (export "on-data") (param $dir i32) (param $ptr i32) (param $len i32) (param $eos i32) (result i32)
    (if (i32.eq (global.get $mode) (i32.const 120)) (then (call $exit (i32.const 3))))
    (if (i32.eq (global.get $mode) (i32.const 99))
      (then (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 2048)))))
    (if (i32.eq (global.get $mode) (i32.const 114))
      (then (drop (call $random (i32.const 2048) (i32.const 8)))))
    (if (i32.eq (global.get $mode) (i32.const 82)) ;; R
      (then (drop (call $random (i32.const 0xfffffff0) (i32.const 64)))))
    (if (i32.eq (global.get $mode) (i32.const 51)) ;; 3
      (then (return (call $errno_verdict
        (call $fd_write (i32.const 3) (i32.const 0xfffffff0) (i32.const 1000) (i32.const 0xffffffff))))))
    (if (i32.eq (global.get $mode) (i32.const 48)) ;; 0
      (then (return (call $errno_verdict
        (call $fd_write (i32.const 1) (i32.const 1040) (i32.const 0) (i32.const 1048))))))
    ;; one iovec at 1040: (ptr, len); nwritten at 1048
    (i32.store (i32.const 1040) (local.get $ptr))
    (i32.store (i32.const 1044) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 1040) (i32.const 1) (i32.const 1048)))
    (i32.store8 (i32.const 1024) (i32.const 0))
    (i32.const 1024))
  (func (export "on-close"))
)

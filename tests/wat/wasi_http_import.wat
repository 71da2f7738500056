;; A component that imports wasi:http (as componentize-js output does) and calls a constructor
;; from it: the wasmtime tier links it to stubs that deny (tests/test_http_component.py).
(component
  (import "wasi:io/poll@0.2.0" (instance $poll
    (export "pollable" (type (sub resource)))
  ))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:http/types@0.2.0" (instance $http
    (alias outer 1 $pollable (type $p))
    (export "pollable" (type (eq $p)))
    (export "fields" (type (sub resource)))
    (export "[constructor]fields" (func (result (own 2))))
  ))
  (alias export $http "fields" (type $fields))
  (import "wasi:http/outgoing-handler@0.2.0" (instance $out
    (alias outer 1 $fields (type $f))
    (export "fields" (type (eq $f)))
    (export "handle" (func (param "f" (own 1)) (result u32)))
  ))
  (core func $ctor (canon lower (func $http "[constructor]fields")))
  (core module $m
    (import "h" "ctor" (func $ctor (result i32)))
    (func (export "run") (drop (call $ctor)))
  )
  (core instance $i (instantiate $m (with "h" (instance (export "ctor" (func $ctor))))))
  (func (export "run") (canon lift (core func $i "run")))
)

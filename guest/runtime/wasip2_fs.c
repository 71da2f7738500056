/*
 * wasi:filesystem in the guest: no preopens, so no descriptor ever exists.
 * get-directories returns an empty list; every descriptor and
 * directory-entry-stream function ends the event with LC_STATUS_ABI
 * (LC_ABI_BAD_HANDLE): whatever handle it is given cannot be one.
 */
#include "wasip2_rt.h"

void lc_wasip2_never(uint8_t type, uint32_t self) {
    (void)lc_h_get(self, type); /* traps: no handle of this type is ever made */
    lc_fail(LC_STATUS_ABI, LC_ABI_BAD_HANDLE);
}

/* list<tuple<own<descriptor>, string>>: (ptr, len) */
void lc_wasip2_filesystem_preopens_get_directories(struct lc_canon *cx, uint32_t retptr) {
    uint8_t *area = lc_cx_area(cx, retptr, 8, 4);
    lc_rt_st32(area, 0);
    lc_rt_st32(area + 4, 0);
}

/* option<error-code>: no error resource comes from a file operation: none. */
void lc_wasip2_filesystem_types_filesystem_error_code(struct lc_canon *cx, uint32_t err, uint32_t retptr) {
    (void)lc_h_get(err, LC_RES_ERROR);
    lc_cx_area(cx, retptr, 2, 1)[0] = 0;
}

void lc_wasip2_filesystem_types_method_descriptor_read_via_stream(struct lc_canon *cx, uint32_t self, uint64_t offset, uint32_t retptr) {
    (void)cx;
    (void)offset;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_write_via_stream(struct lc_canon *cx, uint32_t self, uint64_t offset, uint32_t retptr) {
    (void)cx;
    (void)offset;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_append_via_stream(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_advise(struct lc_canon *cx, uint32_t self, uint64_t offset, uint64_t length, uint32_t advice, uint32_t retptr) {
    (void)cx;
    (void)offset;
    (void)length;
    (void)advice;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_sync_data(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_get_flags(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_get_type(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_set_size(struct lc_canon *cx, uint32_t self, uint64_t size, uint32_t retptr) {
    (void)cx;
    (void)size;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_set_times(struct lc_canon *cx, uint32_t self, uint32_t data_access_timestamp_0, uint64_t data_access_timestamp_1, uint32_t data_access_timestamp_2, uint32_t data_modification_timestamp_0, uint64_t data_modification_timestamp_1, uint32_t data_modification_timestamp_2, uint32_t retptr) {
    (void)cx;
    (void)data_access_timestamp_0;
    (void)data_access_timestamp_1;
    (void)data_access_timestamp_2;
    (void)data_modification_timestamp_0;
    (void)data_modification_timestamp_1;
    (void)data_modification_timestamp_2;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_read(struct lc_canon *cx, uint32_t self, uint64_t length, uint64_t offset, uint32_t retptr) {
    (void)cx;
    (void)length;
    (void)offset;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_write(struct lc_canon *cx, uint32_t self, uint32_t buffer_ptr, uint32_t buffer_len, uint64_t offset, uint32_t retptr) {
    (void)cx;
    (void)buffer_ptr;
    (void)buffer_len;
    (void)offset;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_read_directory(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_sync(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_create_directory_at(struct lc_canon *cx, uint32_t self, uint32_t path_ptr, uint32_t path_len, uint32_t retptr) {
    (void)cx;
    (void)path_ptr;
    (void)path_len;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_stat(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_stat_at(struct lc_canon *cx, uint32_t self, uint32_t path_flags, uint32_t path_ptr, uint32_t path_len, uint32_t retptr) {
    (void)cx;
    (void)path_flags;
    (void)path_ptr;
    (void)path_len;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_set_times_at(struct lc_canon *cx, uint32_t self, uint32_t path_flags, uint32_t path_ptr, uint32_t path_len, uint32_t data_access_timestamp_0, uint64_t data_access_timestamp_1, uint32_t data_access_timestamp_2, uint32_t data_modification_timestamp_0, uint64_t data_modification_timestamp_1, uint32_t data_modification_timestamp_2, uint32_t retptr) {
    (void)cx;
    (void)path_flags;
    (void)path_ptr;
    (void)path_len;
    (void)data_access_timestamp_0;
    (void)data_access_timestamp_1;
    (void)data_access_timestamp_2;
    (void)data_modification_timestamp_0;
    (void)data_modification_timestamp_1;
    (void)data_modification_timestamp_2;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_link_at(struct lc_canon *cx, uint32_t self, uint32_t old_path_flags, uint32_t old_path_ptr, uint32_t old_path_len, uint32_t new_descriptor, uint32_t new_path_ptr, uint32_t new_path_len, uint32_t retptr) {
    (void)cx;
    (void)old_path_flags;
    (void)old_path_ptr;
    (void)old_path_len;
    (void)new_descriptor;
    (void)new_path_ptr;
    (void)new_path_len;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_open_at(struct lc_canon *cx, uint32_t self, uint32_t path_flags, uint32_t path_ptr, uint32_t path_len, uint32_t open_flags, uint32_t flags, uint32_t retptr) {
    (void)cx;
    (void)path_flags;
    (void)path_ptr;
    (void)path_len;
    (void)open_flags;
    (void)flags;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_readlink_at(struct lc_canon *cx, uint32_t self, uint32_t path_ptr, uint32_t path_len, uint32_t retptr) {
    (void)cx;
    (void)path_ptr;
    (void)path_len;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_remove_directory_at(struct lc_canon *cx, uint32_t self, uint32_t path_ptr, uint32_t path_len, uint32_t retptr) {
    (void)cx;
    (void)path_ptr;
    (void)path_len;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_rename_at(struct lc_canon *cx, uint32_t self, uint32_t old_path_ptr, uint32_t old_path_len, uint32_t new_descriptor, uint32_t new_path_ptr, uint32_t new_path_len, uint32_t retptr) {
    (void)cx;
    (void)old_path_ptr;
    (void)old_path_len;
    (void)new_descriptor;
    (void)new_path_ptr;
    (void)new_path_len;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_symlink_at(struct lc_canon *cx, uint32_t self, uint32_t old_path_ptr, uint32_t old_path_len, uint32_t new_path_ptr, uint32_t new_path_len, uint32_t retptr) {
    (void)cx;
    (void)old_path_ptr;
    (void)old_path_len;
    (void)new_path_ptr;
    (void)new_path_len;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_unlink_file_at(struct lc_canon *cx, uint32_t self, uint32_t path_ptr, uint32_t path_len, uint32_t retptr) {
    (void)cx;
    (void)path_ptr;
    (void)path_len;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

uint32_t lc_wasip2_filesystem_types_method_descriptor_is_same_object(struct lc_canon *cx, uint32_t self, uint32_t other) {
    (void)cx;
    (void)other;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_metadata_hash(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_descriptor_metadata_hash_at(struct lc_canon *cx, uint32_t self, uint32_t path_flags, uint32_t path_ptr, uint32_t path_len, uint32_t retptr) {
    (void)cx;
    (void)path_flags;
    (void)path_ptr;
    (void)path_len;
    (void)retptr;
    lc_wasip2_never(LC_RES_DESCRIPTOR, self);
}

void lc_wasip2_filesystem_types_method_directory_entry_stream_read_directory_entry(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_DIRECTORY_ENTRY_STREAM, self);
}

void lc_wasip2_filesystem_types_resource_drop_descriptor(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_DESCRIPTOR);
}

void lc_wasip2_filesystem_types_resource_drop_directory_entry_stream(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_DIRECTORY_ENTRY_STREAM);
}

//! TAKD (Mirzadeh et al., AAAI 2020): the teacher teaches an assistant of intermediate size with
//! the method, and the trained assistant teaches the student with the same method. The chain's
//! rules live here once; `kdlab distill --assistant` runs the chain's links one after the other and
//! a study plans one run per link, each link a full distillation run.
//!
//! The rules:
//! - the links, in training order: the assistant, then the student;
//! - each link is trained with the student's training settings and its own architecture;
//! - the first link is taught by the chain's teacher, with that teacher's settings (checkpoint
//!   epoch, input normalisation, calibration); the student is taught by the trained assistant, a
//!   kdlab run, so none of the first teacher's settings carry over to it;
//! - each link's run records its role (`takd_role`, and for the student the chain it ends).

/// What a link is in its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Assistant,
    Student,
}

/// Who teaches a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaughtBy {
    /// The chain's teacher, with its own settings (epoch, normalisation, calibration).
    Teacher,
    /// The trained assistant: a kdlab run, read as it is.
    Assistant,
}

impl TaughtBy {
    /// Whether the chain teacher's settings (a chosen checkpoint epoch or fit level, input
    /// normalisation, calibration) apply to this link's teacher.
    pub fn keeps_teacher_settings(self) -> bool {
        self == TaughtBy::Teacher
    }
}

/// One run of the chain: `model` distilled from whoever `taught_by` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub model: String,
    pub role: Role,
    pub taught_by: TaughtBy,
}

impl Link {
    /// The run directory's name under the chain's output directory (`kdlab distill`).
    pub fn dir_name(&self) -> &'static str {
        match self.role {
            Role::Assistant => "assistant",
            Role::Student => "student",
        }
    }
}

/// The chain's two links, in training order: `assistant` taught by the chain's teacher, then
/// `student` taught by the trained assistant.
pub fn chain(assistant: &str, student: &str) -> [Link; 2] {
    [
        Link { model: assistant.to_string(), role: Role::Assistant, taught_by: TaughtBy::Teacher },
        Link { model: student.to_string(), role: Role::Student, taught_by: TaughtBy::Assistant },
    ]
}

/// What a link's run records about its place in the chain (run.json's `extra`).
pub fn role_record(link: &Link, teacher: &str, assistant: &str) -> serde_json::Value {
    match link.role {
        Role::Assistant => serde_json::json!({"takd_role": "assistant"}),
        Role::Student => {
            serde_json::json!({"takd_role": "student", "takd_teacher": teacher, "takd_assistant": assistant})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assistant_is_taught_by_the_teacher_and_the_student_by_the_assistant() {
        let [a, s] = chain("cnn_w4", "mlp_32x1");
        assert_eq!((a.model.as_str(), a.role, a.taught_by), ("cnn_w4", Role::Assistant, TaughtBy::Teacher));
        assert_eq!((s.model.as_str(), s.role, s.taught_by), ("mlp_32x1", Role::Student, TaughtBy::Assistant));
        assert!(a.taught_by.keeps_teacher_settings() && !s.taught_by.keeps_teacher_settings());
        assert_eq!((a.dir_name(), s.dir_name()), ("assistant", "student"));
    }

    #[test]
    fn the_student_records_the_chain_it_ends() {
        let [a, s] = chain("cnn_w4", "mlp_32x1");
        assert_eq!(role_record(&a, "runs/t", "cnn_w4"), serde_json::json!({"takd_role": "assistant"}));
        assert_eq!(
            role_record(&s, "runs/t", "cnn_w4"),
            serde_json::json!({"takd_role": "student", "takd_teacher": "runs/t", "takd_assistant": "cnn_w4"})
        );
    }
}
